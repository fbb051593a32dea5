// Performance: the machine (CPU, memory, GPUs from /api/performance) and
// the requests (rate, generation speed and time to first token from the
// activity log) over time, refreshed every few seconds.

import { lineChart } from "../chart.js";
import { formatNumber, h, url } from "../dom.js";

const REFRESH_MS = 5000;

function panel(title, testid) {
  const body = h("div", { class: "chart-body", "data-testid": testid });
  const value = h("span", { class: "count" });
  return { card: h("section", { class: "card", "aria-label": title }, h("div", { class: "card-header" }, h("h2", {}, title), value), body), body, value };
}

export function performancePage(container) {
  const cpu = panel("CPU", "chart-cpu");
  const memory = panel("Memory", "chart-memory");
  const gpu = panel("GPU", "chart-gpu");
  const rate = panel("Requests per minute", "chart-rate");
  const speed = panel("Generation speed", "chart-speed");
  const firstToken = panel("Time to first token", "chart-first-token");
  const notice = h("p", { class: "muted", "data-testid": "performance-notice", hidden: true });
  container.append(notice, h("div", { class: "model-grid charts" }, cpu.card, memory.card, rate.card, speed.card, firstToken.card, gpu.card));

  const refresh = async () => {
    try {
      const response = await fetch(url("/api/performance"));
      if (response.status === 503) {
        notice.textContent = "Host monitoring is off (performance.disabled in the configuration).";
        notice.hidden = false;
      } else if (response.ok) {
        notice.hidden = true;
        const { sys_stats: system = [], gpu_stats: gpus = [] } = await response.json();
        const points = (pick) => system.map((sample) => [Date.parse(sample.timestamp), pick(sample)]);
        const average = (sample) => sample.cpu_util_per_core.reduce((sum, value) => sum + value, 0) / Math.max(1, sample.cpu_util_per_core.length);
        cpu.body.replaceChildren(lineChart([{ label: "CPU", points: points(average) }], { unit: "%", max: 100, label: "CPU use over time" }));
        const last = system[system.length - 1];
        cpu.value.textContent = last ? `${average(last).toFixed(0)} %` : "";
        memory.body.replaceChildren(lineChart([{ label: "Memory", points: points((sample) => sample.mem_used_mb / 1024) }], { unit: " GiB", max: last ? last.mem_total_mb / 1024 : null, label: "Memory use over time" }));
        memory.value.textContent = last ? `${(last.mem_used_mb / 1024).toFixed(1)} of ${(last.mem_total_mb / 1024).toFixed(1)} GiB` : "";
        const byGpu = new Map();
        for (const sample of gpus) {
          if (!byGpu.has(sample.id)) byGpu.set(sample.id, []);
          byGpu.get(sample.id).push([Date.parse(sample.timestamp), sample.gpu_util_pct]);
        }
        gpu.card.hidden = byGpu.size === 0;
        gpu.body.replaceChildren(lineChart([...byGpu.values()].map((entries, index) => ({ label: `GPU ${index}`, points: entries })), { unit: "%", max: 100, label: "GPU use over time" }));
      }
      const since = new Date(Date.now() - 3600 * 1000).toISOString().replace(/\.\d+Z$/, "Z");
      const listing = await fetch(url(`/api/metrics/activity?${new URLSearchParams({ start: since, limit: "999" })}`));
      if (listing.ok) {
        const entries = (await listing.json()).data;
        const perMinute = new Map();
        for (const entry of entries) {
          const minute = Math.floor(Date.parse(entry.timestamp) / 60000) * 60000;
          perMinute.set(minute, (perMinute.get(minute) || 0) + 1);
        }
        rate.body.replaceChildren(lineChart([{ label: "requests", points: [...perMinute.entries()].sort((a, b) => a[0] - b[0]) }], { label: "Requests per minute" }));
        rate.value.textContent = `${formatNumber(entries.length)} in the last hour`;
        const speeds = entries
          .filter((entry) => entry.tokens.tokens_per_second > 0)
          .map((entry) => [Date.parse(entry.timestamp), entry.tokens.tokens_per_second])
          .sort((a, b) => a[0] - b[0]);
        speed.body.replaceChildren(lineChart([{ label: "tokens/s", points: speeds }], { unit: "", label: "Generation speed in tokens per second" }));
        speed.value.textContent = speeds.length ? `${speeds[speeds.length - 1][1].toFixed(1)} tokens/s` : "";
        // the model server's own prompt processing time (tokens over speed),
        // which is what a client waits for its first token once the model runs
        const waits = entries
          .filter((entry) => entry.tokens.input_tokens > 0 && entry.tokens.prompt_per_second > 0)
          .map((entry) => [Date.parse(entry.timestamp), (1000 * entry.tokens.input_tokens) / entry.tokens.prompt_per_second])
          .sort((a, b) => a[0] - b[0]);
        firstToken.body.replaceChildren(lineChart([{ label: "ms", points: waits }], { unit: " ms", label: "Time to first token in milliseconds (prompt processing)" }));
        firstToken.value.textContent = waits.length ? `${Math.round(waits[waits.length - 1][1])} ms` : "";
      }
    } catch (error) {
      /* the connection badge says the server is away */
    }
  };
  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => clearInterval(timer);
}
