// Request statistics from the token metrics: totals, generation speed
// percentiles and a histogram of tokens per second.

import { formatNumber, h, percentile } from "./dom.js";
import { store } from "./store.js";

const BINS = 16;

function stat(label, value, testid) {
  return h("div", { class: "stat" }, h("div", { class: "label" }, label), h("div", { class: "value", "data-testid": testid }, value));
}

export function statsPanel() {
  const body = h("div", { class: "stats" });
  const card = h(
    "section",
    { class: "card", "data-testid": "stats" },
    h("div", { class: "card-header" }, h("h2", {}, "Statistics")),
    body,
  );

  const render = () => {
    const metrics = store.metrics;
    const speeds = metrics.map((m) => m.tokens_per_second).filter((speed) => speed >= 0).sort((a, b) => a - b);
    const processed = metrics.reduce((sum, m) => sum + Math.max(0, m.input_tokens), 0);
    const generated = metrics.reduce((sum, m) => sum + Math.max(0, m.output_tokens), 0);
    const show = (value) => (value === null ? "–" : value.toFixed(1));
    body.replaceChildren(
      h(
        "div",
        { class: "stat-grid" },
        stat("Requests", formatNumber(metrics.length), "stat-requests"),
        stat("Processed tokens", formatNumber(processed), "stat-processed"),
        stat("Generated tokens", formatNumber(generated), "stat-generated"),
        stat("P50 tok/s", show(percentile(speeds, 0.5)), "stat-p50"),
        stat("P95 tok/s", show(percentile(speeds, 0.95)), "stat-p95"),
        stat("P99 tok/s", show(percentile(speeds, 0.99)), "stat-p99"),
      ),
      histogram(speeds),
    );
  };

  render();
  card.cleanup = store.on("metrics", render);
  return card;
}

function histogram(speeds) {
  if (!speeds.length) return h("div", { class: "empty" }, "No generation speeds recorded yet");
  const low = speeds[0];
  const high = speeds[speeds.length - 1];
  const bins = high > low ? BINS : 1;
  const width = (high - low) / bins || 1;
  const counts = new Array(bins).fill(0);
  for (const speed of speeds) counts[Math.min(bins - 1, Math.floor((speed - low) / width))] += 1;
  const tallest = Math.max(...counts);
  return h(
    "div",
    {},
    h(
      "div",
      { class: "histogram", role: "img", "aria-label": "Histogram of generation speed in tokens per second" },
      counts.map((count, index) =>
        h("div", {
          class: "bar",
          style: { height: `${(count / tallest) * 100}%` },
          title: `${(low + index * width).toFixed(1)}–${(low + (index + 1) * width).toFixed(1)} tok/s: ${count}`,
        }),
      ),
    ),
    h("div", { class: "histogram-axis" }, h("span", {}, `${low.toFixed(1)} tok/s`), h("span", {}, "generation speed"), h("span", {}, `${high.toFixed(1)} tok/s`)),
  );
}
