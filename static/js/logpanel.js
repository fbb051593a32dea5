// A live log panel: ANSI colours, regex filter, wrap toggle, font size,
// pause and copy, one model's output alone (the upstream panel), and
// scrolling that follows the newest line unless the reader has scrolled up.

import { renderAnsi, stripAnsi } from "./ansi.js";
import { h, modelPath, persist, persisted, url } from "./dom.js";
import { store } from "./store.js";

const MODEL_LOG_LIMIT = 200 * 1024;

export function logPanel(id, title, source, perModel = false) {
  const settings = persisted(`log.${id}`, { filter: "", wrap: false, size: 12 });
  const save = () => persist(`log.${id}`, settings);

  const body = h("pre", { class: "log-body", "data-testid": `log-${id}`, tabindex: "0", "aria-label": `${title} output` });
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
  const pause = h("button", { class: "button", type: "button", "aria-pressed": "false", title: "Stop following new output" }, "Pause");
  const copy = h("button", { class: "button", type: "button", title: "Copy what is shown" }, "Copy");
  const model = perModel ? h("select", { "aria-label": `Model shown in ${title}`, "data-testid": `log-model-${id}` }) : null;
  const panel = h(
    "section",
    { class: "card log-panel", "data-log": id },
    h("div", { class: "card-header" }, h("h2", {}, title), model, filter, wrap, smaller, size, larger, pause, copy),
    body,
  );

  let pattern = null;
  let following = true;
  let scheduled = false;
  let paused = false;
  let modelText = null; // one model's output, when one is chosen
  let reader = null;
  let shownText = "";

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
    if (paused) return;
    const text = modelText !== null ? modelText : store.logs[source];
    const shown = pattern
      ? text.split("\n").filter((line) => pattern.test(stripAnsi(line))).join("\n")
      : text;
    if (shown !== shownText) {
      shownText = shown;
      if (shown.includes("\x1b[")) body.replaceChildren(renderAnsi(shown));
      else body.textContent = shown;
    }
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

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) schedule();
  });
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(stripAnsi(shownText));
      copy.textContent = "Copied";
    } catch (error) {
      copy.textContent = "Copy failed";
    }
    setTimeout(() => (copy.textContent = "Copy"), 1500);
  });

  // One model's output: its own stream, /logs/stream/<model>.
  const follow = async (modelId) => {
    if (reader) reader.cancel().catch(() => {});
    reader = null;
    modelText = modelId ? "" : null;
    shownText = null;
    schedule();
    if (!modelId) return;
    try {
      const response = await fetch(url(`/logs/stream/${modelPath(modelId)}`));
      const current = response.body.getReader();
      reader = current;
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await current.read();
        if (done || reader !== current) break;
        modelText = (modelText + decoder.decode(value, { stream: true })).slice(-MODEL_LOG_LIMIT);
        schedule();
      }
    } catch (error) {
      /* cancelled, or the server went away: the connection badge tells */
    }
  };
  const fillModels = () => {
    if (!model) return;
    const current = model.value;
    const ids = store.models.map((entry) => entry.id);
    model.replaceChildren(h("option", { value: "" }, "All models"), ...ids.map((entry) => h("option", { value: entry }, entry)));
    model.value = ids.includes(current) ? current : "";
  };
  if (model) {
    fillModels();
    model.addEventListener("change", () => follow(model.value));
  }

  compile();
  style();
  render();
  const unsubscribe = [store.on(`log:${source}`, schedule), model ? store.on("models", fillModels) : () => {}];
  panel.cleanup = () => {
    unsubscribe.forEach((off) => off());
    if (reader) reader.cancel().catch(() => {});
    reader = null;
  };
  return panel;
}
