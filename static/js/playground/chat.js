// Chat: streamed answers, a stop button, reasoning shown apart (and
// collapsed once the answer is done), a system prompt, temperature and
// token limits; the conversation stays in this browser until cleared.

import { h, persist, persisted } from "../dom.js";
import { renderMarkdown } from "../markdown.js";
import { events, post } from "./common.js";

function bubble(message) {
  const body = h("div", { class: "bubble-body" });
  const reasoning = h("details", { class: "reasoning", hidden: !message.reasoning }, h("summary", {}, "Reasoning"), h("pre", {}, message.reasoning || ""));
  const element = h("div", { class: `bubble ${message.role}`, "data-role": message.role }, reasoning, body);
  const update = (done) => {
    reasoning.hidden = !message.reasoning;
    reasoning.querySelector("pre").textContent = message.reasoning || "";
    reasoning.open = !done && !message.content;
    body.replaceChildren(message.role === "assistant" ? renderMarkdown(message.content || "") : h("p", {}, message.content));
  };
  update(true);
  return { element, update };
}

export function chatTab(context) {
  const saved = persisted("playground", { system: "", temperature: 0.7, maxTokens: 512, messages: [] });
  const system = h("textarea", { rows: 2, placeholder: "System prompt (optional)", "aria-label": "System prompt" });
  system.value = saved.system;
  const temperature = h("input", { type: "number", min: 0, max: 2, step: 0.1, value: saved.temperature, "aria-label": "Temperature" });
  const maxTokens = h("input", { type: "number", min: 1, step: 1, value: saved.maxTokens, "aria-label": "Max tokens" });
  const conversation = h("div", { class: "conversation", "data-testid": "conversation", "aria-live": "polite" });
  const input = h("textarea", { rows: 3, placeholder: "Message (Enter sends, Shift+Enter for a new line)", "aria-label": "Message" });
  const send = h("button", { class: "button primary", type: "submit" }, "Send");
  const stop = h("button", { class: "button danger", type: "button", hidden: true }, "Stop");
  const clear = h("button", { class: "button", type: "button" }, "Clear");
  const status = h("span", { class: "muted", "data-testid": "playground-status", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "composer" },
    input,
    h("div", { class: "composer-actions" }, status, h("label", {}, "Temperature ", temperature), h("label", {}, "Max tokens ", maxTokens), clear, stop, send),
  );
  const element = h("div", { class: "tab-body chat" }, system, conversation, form);

  let messages = saved.messages;
  let controller = null;
  const save = () => {
    persist("playground", {
      system: system.value,
      temperature: Number(temperature.value),
      maxTokens: Number(maxTokens.value),
      messages: messages.slice(-50),
    });
  };
  const renderAll = () => {
    conversation.replaceChildren(...messages.map((message) => bubble(message).element));
    conversation.scrollTop = conversation.scrollHeight;
  };
  const busy = (on) => {
    send.disabled = on;
    stop.hidden = !on;
  };

  const ask = async () => {
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    messages.push({ role: "user", content: text });
    const answer = { role: "assistant", content: "", reasoning: "" };
    messages.push(answer);
    renderAll();
    const view = bubble(answer);
    conversation.lastChild.replaceWith(view.element);
    controller = new AbortController();
    busy(true);
    status.textContent = "";
    const history = messages.slice(0, -1).map(({ role, content }) => ({ role, content }));
    if (system.value.trim()) history.unshift({ role: "system", content: system.value.trim() });
    try {
      const response = await post(
        "/v1/chat/completions",
        { model: context.model(), messages: history, stream: true, temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) },
        controller.signal,
      );
      for await (const event of events(response)) {
        const delta = ((event.choices || [])[0] || {}).delta || {};
        answer.content += delta.content || "";
        answer.reasoning += delta.reasoning_content || "";
        view.update(false);
        conversation.scrollTop = conversation.scrollHeight;
      }
      status.textContent = "";
    } catch (error) {
      status.textContent = error.name === "AbortError" ? "stopped" : `error: ${error.message}`;
      if (!answer.content) answer.content = error.name === "AbortError" ? "(stopped)" : "";
    } finally {
      controller = null;
      busy(false);
      view.update(true);
      save();
    }
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ask();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      ask();
    }
  });
  stop.addEventListener("click", () => controller && controller.abort());
  clear.addEventListener("click", () => {
    messages = [];
    save();
    renderAll();
  });
  for (const control of [system, temperature, maxTokens]) control.addEventListener("change", save);
  renderAll();
  return {
    element,
    cleanup() {
      if (controller) controller.abort();
    },
  };
}
