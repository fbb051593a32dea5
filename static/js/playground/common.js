// What the playground's tabs share: calling llamaswap's API with clear
// errors, and telling the person a model is loading while they wait.

import { h, sseEvent, url } from "../dom.js";
import { store } from "../store.js";

// The message of an error answer: OpenAI's {"error": {"message"}}, the
// simpler {"error": "..."}, or the status.
export async function errorMessage(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    const error = body.error;
    if (typeof error === "string") return error;
    if (error && error.message) return error.message;
  } catch (error) {
    /* not JSON */
  }
  return text.trim().slice(0, 300) || `HTTP ${response.status}`;
}

// POST to one of llamaswap's paths; the answer when it is a success, an
// Error with the server's message otherwise.
export async function post(path, body, signal) {
  const json = !(body instanceof FormData);
  const response = await fetch(url(path), {
    method: "POST",
    headers: json ? { "Content-Type": "application/json" } : {},
    body: json ? JSON.stringify(body) : body,
    signal,
  });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response;
}

// While a request waits, the status line says how the model's start is
// going ("loading alpha… 3 s"); returns the function that stops saying it.
export function showLoading(status, modelId) {
  const started = Date.now();
  const update = () => {
    const model = store.models.find((entry) => entry.id === modelId);
    const seconds = Math.round((Date.now() - started) / 1000);
    if (model && model.state === "starting") status.textContent = `loading ${modelId}… ${seconds} s`;
    else if (model && model.queued) status.textContent = `waiting for ${modelId}… ${seconds} s`;
    else status.textContent = "working…";
  };
  update();
  const timer = setInterval(update, 500);
  const unsubscribe = store.on("models", update);
  return () => {
    clearInterval(timer);
    unsubscribe();
  };
}

// A tab's frame: its form above, its results below, a status line.
export function panel(name, form, results) {
  const status = h("span", { class: "muted", "data-testid": `${name}-status`, role: "status", "aria-live": "polite" });
  return { status, element: h("div", { class: "tab-body" }, form, status, results) };
}

// Run one request of a tab: busy controls, loading progress, errors in
// the status line; "done" is what the status says after a success.
export async function run({ status, modelId, controls, signal }, work) {
  for (const control of controls) control.disabled = true;
  const stop = showLoading(status, modelId);
  try {
    const done = await work(signal);
    stop();
    status.textContent = done || "";
  } catch (error) {
    stop();
    status.textContent = error.name === "AbortError" ? "stopped" : `error: ${error.message}`;
  } finally {
    for (const control of controls) control.disabled = false;
  }
}

// Every JSON event of a server-sent-events answer, in order; an event that
// carries an error ends the stream with that error.
export async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    pending += decoder.decode(value, { stream: true });
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) {
      const event = sseEvent(line);
      if (!event) continue;
      if (event.error) throw new Error(event.error.message || event.error || "the stream ended with an error");
      yield event;
    }
  }
}
