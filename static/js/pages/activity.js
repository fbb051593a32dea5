import { formatDuration, formatNumber, formatSpeed, h, relativeTime } from "../dom.js";
import { store } from "../store.js";

const COLUMNS = [
  ["ID", "num"],
  ["Time", ""],
  ["Model", ""],
  ["Cached", "num hide-narrow"],
  ["Prompt", "num"],
  ["Generated", "num"],
  ["Prompt speed", "num hide-narrow"],
  ["Gen. speed", "num"],
  ["Duration", "num hide-narrow"],
];

export function activityPage(container) {
  const wrap = h("div", { class: "table-wrap" });
  const card = h(
    "section",
    { class: "card activity-card" },
    h("div", { class: "card-header" }, h("h2", {}, "Activity"), h("span", { class: "count" })),
    wrap,
  );
  container.append(card);

  const render = () => {
    const metrics = store.metrics.slice().reverse();
    card.querySelector(".count").textContent = `${formatNumber(metrics.length)} request${metrics.length === 1 ? "" : "s"}`;
    if (!metrics.length) {
      wrap.replaceChildren(h("div", { class: "empty" }, "No requests yet: token metrics appear here as requests finish"));
      return;
    }
    const now = Date.now();
    wrap.replaceChildren(
      h(
        "table",
        { "data-testid": "activity" },
        h("thead", {}, h("tr", {}, COLUMNS.map(([title, cls]) => h("th", { class: cls }, title)))),
        h(
          "tbody",
          {},
          metrics.map((m) =>
            h(
              "tr",
              { "data-id": m.id },
              h("td", { class: "num" }, m.id),
              h("td", { title: new Date(m.timestamp).toLocaleString() }, relativeTime(m.timestamp, now)),
              h("td", {}, m.model),
              h("td", { class: "num hide-narrow" }, m.cache_tokens < 0 ? "–" : formatNumber(m.cache_tokens)),
              h("td", { class: "num" }, formatNumber(m.input_tokens)),
              h("td", { class: "num" }, formatNumber(m.output_tokens)),
              h("td", { class: "num hide-narrow" }, formatSpeed(m.prompt_per_second)),
              h("td", { class: "num" }, formatSpeed(m.tokens_per_second)),
              h("td", { class: "num hide-narrow" }, formatDuration(m.duration_ms)),
            ),
          ),
        ),
      ),
    );
  };

  render();
  const unsubscribe = store.on("metrics", render);
  // Relative times age on screen; this only redraws, it asks the server nothing.
  const ticker = setInterval(render, 10000);
  return () => {
    unsubscribe();
    clearInterval(ticker);
  };
}
