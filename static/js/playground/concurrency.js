// Concurrency tester: N streamed chat requests at once to one model, each
// one's time to first token, latency and speed in a table as they arrive,
// then what the model did in total.

import { formatDuration, h, percentile } from "../dom.js";
import { events, panel, post, showLoading } from "./common.js";

export function concurrencyTab(context) {
  const count = h("input", { type: "number", min: 1, max: 64, value: 4, "aria-label": "Parallel requests" });
  const maxTokens = h("input", { type: "number", min: 1, value: 128, "aria-label": "Max tokens per request" });
  const prompt = h("textarea", { rows: 2, "aria-label": "Test prompt" });
  prompt.value = "Write a short poem about swapping models.";
  const start = h("button", { class: "button primary", type: "submit" }, "Run");
  const stop = h("button", { class: "button danger", type: "button", hidden: true }, "Stop");
  const rows = h("tbody", {});
  const summary = h("p", { "data-testid": "concurrency-summary" });
  const table = h(
    "table",
    { class: "table", "data-testid": "concurrency" },
    h("thead", {}, h("tr", {}, ["#", "Status", "First token", "Latency", "Tokens", "Tokens/s"].map((label) => h("th", {}, label)))),
    rows,
  );
  const form = h(
    "form",
    { class: "tab-form" },
    prompt,
    h("div", { class: "composer-actions" }, h("label", {}, "Requests ", count), h("label", {}, "Max tokens ", maxTokens), stop, start),
  );
  const { status, element } = panel("concurrency", form, h("div", {}, summary, table));
  let controller = null;

  const one = async (modelId, signal, row) => {
    const cells = [...row.children];
    const shown = (result) => {
      cells[1].textContent = result.status;
      cells[2].textContent = result.firstToken == null ? "–" : formatDuration(result.firstToken);
      cells[3].textContent = result.latency == null ? "–" : formatDuration(result.latency);
      cells[4].textContent = result.tokens;
      cells[5].textContent = result.speed == null ? "–" : result.speed.toFixed(1);
    };
    const began = performance.now();
    const result = { status: "waiting", firstToken: null, latency: null, tokens: 0, speed: null };
    shown(result);
    try {
      const response = await post(
        "/v1/chat/completions",
        {
          model: modelId,
          messages: [{ role: "user", content: prompt.value }],
          stream: true,
          stream_options: { include_usage: true },
          max_tokens: Number(maxTokens.value) || 128,
        },
        signal,
      );
      result.status = "streaming";
      let counted = 0;
      let reported = null;
      for await (const event of events(response)) {
        const delta = ((event.choices || [])[0] || {}).delta || {};
        if ((delta.content || delta.reasoning_content) && result.firstToken == null) result.firstToken = Math.round(performance.now() - began);
        if (delta.content || delta.reasoning_content) counted += 1;
        if (event.usage && event.usage.completion_tokens != null) reported = event.usage.completion_tokens;
        result.tokens = reported ?? counted;
        shown(result);
      }
      result.status = "done";
    } catch (error) {
      result.status = error.name === "AbortError" ? "stopped" : `error: ${error.message}`;
    }
    result.latency = Math.round(performance.now() - began);
    const generating = (result.latency - (result.firstToken ?? result.latency)) / 1000;
    if (result.tokens && generating > 0) result.speed = result.tokens / generating;
    shown(result);
    return result;
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (controller) return;
    const modelId = context.model();
    const n = Math.min(64, Math.max(1, Number(count.value) || 1));
    controller = new AbortController();
    start.disabled = true;
    stop.hidden = false;
    summary.textContent = "";
    const rowsShown = Array.from({ length: n }, (_, index) => h("tr", {}, h("td", {}, index + 1), h("td"), h("td"), h("td"), h("td"), h("td")));
    rows.replaceChildren(...rowsShown);
    const loading = showLoading(status, modelId);
    const began = performance.now();
    const results = await Promise.all(rowsShown.map((row) => one(modelId, controller.signal, row)));
    const wall = performance.now() - began;
    loading();
    const finished = results.filter((result) => result.status === "done");
    const latencies = finished.map((result) => result.latency).sort((a, b) => a - b);
    const tokens = results.reduce((sum, result) => sum + result.tokens, 0);
    summary.textContent = latencies.length
      ? `${finished.length} of ${n} done in ${formatDuration(Math.round(wall))}: ${(tokens / (wall / 1000)).toFixed(1)} tokens/s in total, ` +
        `latency p50 ${formatDuration(percentile(latencies, 0.5))}, p95 ${formatDuration(percentile(latencies, 0.95))}`
      : `none of ${n} finished`;
    status.textContent = "";
    controller = null;
    start.disabled = false;
    stop.hidden = true;
  });
  stop.addEventListener("click", () => controller && controller.abort());
  return {
    element,
    cleanup() {
      if (controller) controller.abort();
    },
  };
}
