// A live log panel: regex filter, wrap toggle, font size, and scrolling that
// follows the newest line unless the reader has scrolled up.

import { h, persist, persisted } from "./dom.js";
import { store } from "./store.js";

export function logPanel(id, title, source) {
  const settings = persisted(`log.${id}`, { filter: "", wrap: false, size: 12 });
  const save = () => persist(`log.${id}`, settings);

  const body = h("pre", { class: "log-body", "data-testid": `log-${id}` });
  const filter = h("input", {
    class: "filter",
    type: "search",
    placeholder: "filter (regex)",
    "aria-label": `Filter ${title}`,
    value: settings.filter,
  });
  const wrap = h("button", { class: "button", type: "button", "aria-pressed": String(settings.wrap), title: "Wrap long lines" }, "Wrap");
  const size = h("span", { class: "size", title: "Font size" }, `${settings.size}px`);
  const smaller = h("button", { class: "button", type: "button", "aria-label": "Smaller text" }, "A−");
  const larger = h("button", { class: "button", type: "button", "aria-label": "Larger text" }, "A+");
  const panel = h(
    "section",
    { class: "card log-panel", "data-log": id },
    h("div", { class: "card-header" }, h("h2", {}, title), filter, wrap, smaller, size, larger),
    body,
  );

  let pattern = null;
  let following = true;
  let scheduled = false;

  const compile = () => {
    filter.classList.remove("invalid");
    pattern = null;
    if (!settings.filter) return;
    try {
      pattern = new RegExp(settings.filter, "i");
    } catch (error) {
      filter.classList.add("invalid");
    }
  };

  const render = () => {
    scheduled = false;
    const text = store.logs[source];
    const shown = pattern
      ? text.split("\n").filter((line) => pattern.test(line)).join("\n")
      : text;
    if (body.textContent !== shown) body.textContent = shown;
    if (following) body.scrollTop = body.scrollHeight;
  };
  const schedule = () => {
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(render);
    }
  };

  const style = () => {
    body.classList.toggle("wrap", settings.wrap);
    body.style.setProperty("--log-size", `${settings.size}px`);
    wrap.setAttribute("aria-pressed", String(settings.wrap));
    size.textContent = `${settings.size}px`;
  };

  body.addEventListener("scroll", () => {
    following = body.scrollTop + body.clientHeight >= body.scrollHeight - 24;
  });
  filter.addEventListener("input", () => {
    settings.filter = filter.value;
    save();
    compile();
    following = true;
    schedule();
  });
  wrap.addEventListener("click", () => {
    settings.wrap = !settings.wrap;
    save();
    style();
  });
  smaller.addEventListener("click", () => {
    settings.size = Math.max(9, settings.size - 1);
    save();
    style();
  });
  larger.addEventListener("click", () => {
    settings.size = Math.min(22, settings.size + 1);
    save();
    style();
  });

  compile();
  style();
  render();
  const unsubscribe = store.on(`log:${source}`, schedule);
  panel.cleanup = unsubscribe;
  return panel;
}
