import { formatNumber, h, modelPath, persist, persisted, url } from "../dom.js";
import { logPanel } from "../logpanel.js";
import { split } from "../split.js";
import { statsPanel } from "../stats.js";
import { store } from "../store.js";

// What a model can do, as the badges Settings can turn on.
export function capabilityTags(model) {
  const names = Object.entries(model.capabilities || {})
    .filter(([, on]) => on)
    .map(([name]) => name.replaceAll("_", " "));
  if (model.context_length) names.push(`${formatNumber(model.context_length)} context`);
  for (const alias of model.aliases || []) names.push(`alias ${alias}`);
  return names.length ? h("div", { class: "tags", "data-testid": "capability-tags" }, names.map((name) => h("span", { class: "tag" }, name))) : null;
}

export function modelsPage(container) {
  const models = modelsCard();
  const stats = statsPanel();
  const upstream = logPanel("models-upstream", "Upstream logs", "upstream");
  container.append(split("models", models, [stats, upstream]));
  return () => {
    models.cleanup();
    stats.cleanup();
    upstream.cleanup();
  };
}

function modelsCard() {
  const options = persisted("models", { showUnlisted: true, label: "id" });
  const pending = new Set();
  const list = h("div", { class: "models-list" });
  const unlisted = h("button", { class: "button", type: "button", "aria-pressed": String(options.showUnlisted) }, "Show unlisted");
  const label = h("button", { class: "button", type: "button", title: "Show model ids or display names" });
  const unloadAll = h("button", { class: "button danger", type: "button" }, "Unload all");
  const card = h(
    "section",
    { class: "card models-card" },
    h("div", { class: "card-header" }, h("h2", {}, "Models"), unlisted, label, unloadAll),
    list,
  );

  const act = async (key, action) => {
    pending.add(key);
    render();
    try {
      await action();
    } catch (error) {
      console.error(error);
    } finally {
      pending.delete(key);
      render();
    }
  };

  const render = () => {
    label.textContent = options.label === "id" ? "Show names" : "Show ids";
    unlisted.setAttribute("aria-pressed", String(options.showUnlisted));
    const running = store.models.some((m) => !m.peerID && m.state !== "stopped" && m.state !== "shutdown");
    const showTags = persisted("capabilityTags", false);
    unloadAll.disabled = !running || pending.has("*");
    const shown = store.models.filter((model) => options.showUnlisted || !model.unlisted);
    if (!shown.length) {
      list.replaceChildren(h("div", { class: "empty" }, store.models.length ? "All models are unlisted" : "No models yet"));
      return;
    }
    const rows = shown.map((model) => {
      const title = options.label === "name" && model.name ? model.name : model.id;
      if (model.peerID) {
        return h(
          "tr",
          { "data-model": model.id },
          h("td", {}, h("div", { class: "model-name" }, title, h("span", { class: "tag" }, `peer ${model.peerID}`))),
          h("td", {}, h("span", { class: "badge", "data-state": "peer", "data-testid": "state" }, "peer")),
          h("td", { class: "actions" }),
        );
      }
      const busy = pending.has(model.id);
      const loaded = model.state === "ready" || model.state === "starting";
      const button = model.state === "failed"
        ? h("button", { class: "button", type: "button", disabled: busy, title: "Clear the failed state so the next request tries again", onclick: () => act(model.id, () => store.unloadModel(model.id)) }, "Reset")
        : loaded
        ? h("button", { class: "button", type: "button", disabled: busy, onclick: () => act(model.id, () => store.unloadModel(model.id)) }, "Unload")
        : h("button", { class: "button primary", type: "button", disabled: busy || model.state === "stopping", onclick: () => act(model.id, () => store.loadModel(model.id)) }, "Load");
      return h(
        "tr",
        { "data-model": model.id },
        h(
          "td",
          {},
          h(
            "div",
            { class: "model-name" },
            h("a", { href: url(`/ui/models/${modelPath(model.id)}`), "data-page": "models", title: "Settings, activity and log of this model" }, title),
            h("a", { class: "server-link", href: url(`/upstream/${modelPath(model.id)}/`), target: "_blank", rel: "noopener", title: "Open the model server's own page", "aria-label": `Open ${model.id}'s own page` }, "↗"),
            model.unlisted ? h("span", { class: "unlisted-tag" }, "unlisted") : null,
          ),
          showTags ? capabilityTags(model) : null,
          model.description ? h("div", { class: "model-description" }, model.description) : null,
          model.state === "failed" && model.reason ? h("div", { class: "model-reason", "data-testid": "reason" }, model.reason) : null,
        ),
        h(
          "td",
          {},
          h("span", { class: "badge", "data-state": model.state, "data-testid": "state" }, model.state),
          model.queued ? h("span", { class: "queued", "data-testid": "queued", title: "requests waiting for this model" }, `${model.queued} queued`) : null,
        ),
        h("td", { class: "actions" }, button),
      );
    });
    list.replaceChildren(
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", {}, "State"), h("th", { class: "actions" }, ""))),
        h("tbody", {}, rows),
      ),
    );
  };

  unlisted.addEventListener("click", () => {
    options.showUnlisted = !options.showUnlisted;
    persist("models", options);
    render();
  });
  label.addEventListener("click", () => {
    options.label = options.label === "id" ? "name" : "id";
    persist("models", options);
    render();
  });
  unloadAll.addEventListener("click", () => act("*", () => store.unloadAll()));

  render();
  card.cleanup = store.on("models", render);
  return card;
}
