// Playground: chat with any model from the browser -- streamed answers,
// a stop button, reasoning shown apart (and collapsed once the answer is
// done), a system prompt, temperature and token limits; the conversation
// stays in this browser until cleared.

import { h, persist, persisted, sseEvent } from "../dom.js";
import { renderMarkdown } from "../markdown.js";
import { store } from "../store.js";

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

export function playgroundPage(container) {
  const saved = persisted("playground", { model: "", system: "", temperature: 0.7, maxTokens: 512, messages: [] });
  const model = h("select", { "aria-label": "Model", "data-testid": "playground-model" });
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
  const form = h("form", { class: "composer" }, input, h("div", { class: "composer-actions" }, status, clear, stop, send));
  container.append(
    h(
      "section",
      { class: "card playground", "aria-label": "Chat" },
      h("div", { class: "card-header" }, h("h2", {}, "Chat"), model, h("label", {}, "Temperature ", temperature), h("label", {}, "Max tokens ", maxTokens)),
      h("div", { class: "playground-body" }, system, conversation, form),
    ),
  );

  let messages = saved.messages;
  let controller = null;
  const save = () => {
    persist("playground", {
      model: model.value,
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
  const fillModels = () => {
    const ids = store.models.filter((entry) => !entry.unlisted).map((entry) => entry.id);
    const current = model.value || saved.model;
    model.replaceChildren(...ids.map((id) => h("option", { value: id }, id)));
    if (ids.includes(current)) model.value = current;
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
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          model: model.value,
          messages: history,
          stream: true,
          temperature: Number(temperature.value),
          max_tokens: Number(maxTokens.value),
        }),
        signal: controller.signal,
      });
      if (!response.ok) {
        let message = `HTTP ${response.status}`;
        try {
          message = (await response.json()).error.message || message;
        } catch (error) {
          /* not JSON */
        }
        throw new Error(message);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        const lines = pending.split("\n");
        pending = lines.pop();
        for (const line of lines) {
          const event = sseEvent(line);
          if (!event) continue;
          if (event.error) throw new Error(event.error.message || "the stream ended with an error");
          const delta = ((event.choices || [])[0] || {}).delta || {};
          answer.content += delta.content || "";
          answer.reasoning += delta.reasoning_content || "";
        }
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
  for (const control of [model, system, temperature, maxTokens]) control.addEventListener("change", save);

  fillModels();
  renderAll();
  const unsubscribe = store.on("models", fillModels);
  return () => {
    unsubscribe();
    if (controller) controller.abort();
  };
}
