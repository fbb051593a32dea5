// One model's page: its state (a failed one with its reason), load, unload
// or reset, its settings (secrets masked by the server), its latest
// activity and its own live log.

import { formatDuration, formatNumber, h, modelPath, relativeTime, url } from "../dom.js";
import { store } from "../store.js";

function row(label, value) {
  return h("tr", {}, h("th", {}, label), h("td", {}, value === undefined || value === null || value === "" ? "–" : value));
}

export function modelPage(container, modelId) {
  const title = h("h2", {}, modelId);
  const state = h("span", { class: "badge", "data-testid": "state" });
  const reason = h("div", { class: "model-reason", "data-testid": "reason" });
  const actions = h("span", { class: "actions" });
  const settings = h("div", { class: "settings" });
  const activity = h("div", { class: "table-wrap" });
  const log = h("pre", { class: "log-body", "data-testid": "model-log", tabindex: "0", "aria-label": "Model output" });
  const header = h("section", { class: "card" }, h("div", { class: "card-header" }, h("a", { href: url("/ui/models"), "data-page": "models" }, "Models"), " / ", title, state, actions), reason);
  const details = h("section", { class: "card", "aria-label": "Settings" }, h("div", { class: "card-header" }, h("h2", {}, "Settings")), settings);
  const recent = h("section", { class: "card activity-card", "aria-label": "Recent activity" }, h("div", { class: "card-header" }, h("h2", {}, "Recent activity")), activity);
  const logs = h("section", { class: "card log-panel", "aria-label": "Log" }, h("div", { class: "card-header" }, h("h2", {}, "Log")), log);
  container.append(header, h("div", { class: "model-grid" }, details, recent), logs);

  let busy = false;
  const act = async (action) => {
    busy = true;
    renderState();
    try {
      await action();
    } catch (error) {
      /* the state shown says what happened */
    } finally {
      busy = false;
      load();
    }
  };

  const renderState = (info) => {
    const model = store.models.find((entry) => entry.id === modelId) || info || {};
    const current = model.state || "unknown";
    state.textContent = current;
    state.dataset.state = current;
    reason.textContent = current === "failed" ? model.reason || "" : "";
    const loaded = current === "ready" || current === "starting";
    actions.replaceChildren(
      current === "failed"
        ? h("button", { class: "button", type: "button", disabled: busy, onclick: () => act(() => store.unloadModel(modelId)) }, "Reset")
        : loaded
          ? h("button", { class: "button", type: "button", disabled: busy, onclick: () => act(() => store.unloadModel(modelId)) }, "Unload")
          : h("button", { class: "button primary", type: "button", disabled: busy || current === "stopping", onclick: () => act(() => store.loadModel(modelId)) }, "Load"),
    );
  };

  const renderSettings = (info) => {
    title.textContent = info.name ? `${info.name} (${info.id})` : info.id;
    const capabilities = info.capabilities || {};
    const tags = [...(capabilities.in || []).map((kind) => `in: ${kind}`), ...(capabilities.out || []).map((kind) => `out: ${kind}`)];
    if (capabilities.tools) tags.push("tools");
    if (capabilities.reranker) tags.push("reranker");
    if (capabilities.context) tags.push(`context ${formatNumber(capabilities.context)}`);
    settings.replaceChildren(
      h(
        "table",
        { class: "headers", "data-testid": "settings" },
        h(
          "tbody",
          {},
          row("Description", info.description),
          row("Command", h("code", {}, info.cmd)),
          row("Environment", (info.env || []).join(" ")),
          row("Proxy", info.proxy),
          row("Ready check", info.check_endpoint),
          row("ttl", info.ttl ? `${info.ttl} s` : "never unloaded"),
          row("Group", info.group),
          row("Aliases", (info.aliases || []).join(", ")),
          row("Capabilities", tags.length ? h("span", {}, tags.map((tag) => h("span", { class: "tag" }, tag))) : ""),
          row("Metadata", info.metadata && Object.keys(info.metadata).length ? h("code", {}, JSON.stringify(info.metadata)) : ""),
          row("Concurrency", info.concurrency_limit),
          row("Fallback", info.fallback),
        ),
      ),
    );
  };

  const renderActivity = (entries) => {
    if (!entries.length) {
      activity.replaceChildren(h("div", { class: "empty" }, "No requests yet"));
      return;
    }
    const now = Date.now();
    activity.replaceChildren(
      h(
        "table",
        { "data-testid": "model-activity" },
        h("thead", {}, h("tr", {}, ["ID", "Time", "Path", "Status", "Generated", "Duration"].map((name) => h("th", {}, name)))),
        h(
          "tbody",
          {},
          entries.map((entry) =>
            h(
              "tr",
              {},
              h("td", { class: "num" }, entry.id),
              h("td", {}, relativeTime(entry.timestamp, now)),
              h("td", {}, entry.req_path),
              h("td", { title: entry.error_msg || "" }, h("span", { class: "status", "data-ok": String(entry.resp_status_code === 200 && !entry.error_msg) }, entry.resp_status_code)),
              h("td", { class: "num" }, entry.tokens.output_tokens < 0 ? "–" : formatNumber(entry.tokens.output_tokens)),
              h("td", { class: "num" }, formatDuration(entry.duration_ms)),
            ),
          ),
        ),
      ),
    );
  };

  const load = async () => {
    try {
      const response = await fetch(url(`/api/models/${modelPath(modelId)}`));
      if (!response.ok) {
        title.textContent = `Model “${modelId}” not found`;
        return;
      }
      const info = await response.json();
      renderSettings(info);
      renderState(info);
      const listing = await fetch(url(`/api/metrics/activity?${new URLSearchParams({ model: info.id, limit: "20" })}`));
      if (listing.ok) renderActivity((await listing.json()).data);
    } catch (error) {
      /* the connection badge says the server is away */
    }
  };

  // the model's own log, live
  let reader = null;
  let text = "";
  const follow = async () => {
    try {
      const response = await fetch(url(`/logs/stream/${modelPath(modelId)}`));
      reader = response.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text = (text + decoder.decode(value, { stream: true })).slice(-100000);
        const following = log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
        log.textContent = text;
        if (following) log.scrollTop = log.scrollHeight;
      }
    } catch (error) {
      /* cancelled */
    }
  };

  load();
  follow();
  let soon = null;
  const unsubscribe = [
    store.on("models", () => renderState()),
    store.on("activity", () => {
      clearTimeout(soon);
      soon = setTimeout(load, 250);
    }),
  ];
  return () => {
    unsubscribe.forEach((off) => off());
    clearTimeout(soon);
    if (reader) reader.cancel().catch(() => {});
  };
}
