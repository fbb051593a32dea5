// Activity: the requests being served (with a cancel button), and the
// activity log from /api/metrics/activity -- filtered, sorted, paged, live --
// with a viewer for each request's capture and an export of what is shown.

import { formatDuration, formatNumber, formatSpeed, h, pairsTable, persist, persisted, relativeTime, sseEvent, url } from "../dom.js";
import { store } from "../store.js";

const PAGE_SIZE = 50;
const SINCE = { all: 0, "15m": 15 * 60, "1h": 3600, "24h": 86400 };
// [title, sort key (the API's), class]
const COLUMNS = [
  ["ID", "id", "num"],
  ["Time", "time", ""],
  ["Model", "model", ""],
  ["Path", "req_path", "hide-narrow"],
  ["Status", "resp_status_code", ""],
  ["Prompt", "prompt", "num hide-narrow"],
  ["Generated", "generated", "num"],
  ["Gen. speed", "gen_speed", "num hide-narrow"],
  ["Duration", "duration", "num"],
  ["", null, ""],
];

function decodeBody(base64) {
  if (base64 === null || base64 === undefined) return null;
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new TextDecoder("utf-8", { fatal: false }).decode(bytes);
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch (error) {
    return text;
  }
}

// An SSE answer as the message it assembles to (OpenAI chat, completions,
// Responses and Anthropic deltas), or null when it is not one.
export function assembleStream(text) {
  if (!/^data:/m.test(text)) return null;
  let content = "";
  let reasoning = "";
  for (const line of text.split("\n")) {
    const event = sseEvent(line);
    if (!event) continue;
    const choice = (event.choices || [])[0] || {};
    const delta = choice.delta || {};
    content += delta.content || choice.text || "";
    reasoning += delta.reasoning_content || "";
    if (event.type === "response.output_text.delta") content += event.delta || "";
    if (event.type === "content_block_delta" && event.delta) content += event.delta.text || "";
  }
  return { content, reasoning };
}

function headersTable(headers) {
  if (!headers) return h("p", { class: "muted" }, "not kept");
  return pairsTable(Object.entries(headers));
}

function bodyBlock(label, text) {
  if (text === null) return h("div", {}, h("h4", {}, label), h("p", { class: "muted" }, "not kept for this route"));
  return h("div", {}, h("h4", {}, label), h("pre", { class: "body", "data-testid": "capture-body" }, pretty(text)));
}

async function openCapture(id) {
  const response = await fetch(url(`/api/captures/${id}`));
  const dialog = h("dialog", { class: "capture", "aria-label": `Capture of request ${id}` });
  const close = h("button", { class: "button", type: "button", onclick: () => dialog.close() }, "Close");
  dialog.addEventListener("close", () => dialog.remove());
  if (!response.ok) {
    dialog.append(h("p", {}, `No capture for request ${id} (HTTP ${response.status}).`), close);
  } else {
    const capture = await response.json();
    const answer = decodeBody(capture.resp_body);
    const assembled = answer !== null ? assembleStream(answer) : null;
    dialog.append(
      h("div", { class: "card-header" }, h("h2", {}, `Request ${capture.id}: ${capture.req_path}`), close),
      h(
        "div",
        { class: "capture-grid" },
        h("section", {}, h("h3", {}, "Request"), headersTable(capture.req_headers), bodyBlock("Body", decodeBody(capture.req_body))),
        h(
          "section",
          {},
          h("h3", {}, "Response"),
          headersTable(capture.resp_headers),
          assembled
            ? h(
                "div",
                {},
                assembled.reasoning ? h("div", {}, h("h4", {}, "Reasoning"), h("pre", { class: "body" }, assembled.reasoning)) : null,
                h("h4", {}, "Assembled message"),
                h("pre", { class: "body", "data-testid": "assembled" }, assembled.content),
                h("details", {}, h("summary", {}, "Events as sent"), h("pre", { class: "body" }, answer)),
              )
            : bodyBlock("Body", answer),
        ),
      ),
    );
  }
  document.body.append(dialog);
  dialog.showModal();
  close.focus();
}

function download(name, type, text) {
  const link = h("a", { href: URL.createObjectURL(new Blob([text], { type })), download: name });
  document.body.append(link);
  link.click();
  setTimeout(() => {
    URL.revokeObjectURL(link.href);
    link.remove();
  }, 1000);
}

const EXPORT_FIELDS = [
  ["id", (e) => e.id],
  ["time", (e) => e.timestamp],
  ["model", (e) => e.model],
  ["path", (e) => e.req_path],
  ["status", (e) => e.resp_status_code],
  ["prompt_tokens", (e) => e.tokens.input_tokens],
  ["generated_tokens", (e) => e.tokens.output_tokens],
  ["tokens_per_second", (e) => e.tokens.tokens_per_second],
  ["duration_ms", (e) => e.duration_ms],
  ["error", (e) => e.error_msg || ""],
];

export function toCSV(entries) {
  const cell = (value) => {
    const text = String(value);
    return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  };
  return [EXPORT_FIELDS.map(([name]) => name).join(","), ...entries.map((e) => EXPORT_FIELDS.map(([, get]) => cell(get(e))).join(","))].join("\n") + "\n";
}

export function toMarkdown(entries) {
  const cell = (value) => String(value).replaceAll("|", "\\|").replaceAll("\n", " ");
  const header = `| ${EXPORT_FIELDS.map(([name]) => name).join(" | ")} |`;
  const rule = `| ${EXPORT_FIELDS.map(() => "---").join(" | ")} |`;
  return [header, rule, ...entries.map((e) => `| ${EXPORT_FIELDS.map(([, get]) => cell(get(e))).join(" | ")} |`)].join("\n") + "\n";
}

function sessionOf(request, names) {
  const headers = request.req_headers || {};
  for (const wanted of names) {
    for (const [name, value] of Object.entries(headers)) {
      if (name.toLowerCase() === wanted.toLowerCase() && value) return value;
    }
  }
  return "";
}

function inflightPanel() {
  const body = h("div", { class: "table-wrap" });
  const card = h(
    "section",
    { class: "card inflight-card", "aria-label": "Requests in flight" },
    h("div", { class: "card-header" }, h("h2", {}, "In flight"), h("span", { class: "count", "data-testid": "inflight-count" })),
    body,
  );
  const render = () => {
    const requests = [...store.inflight.values()];
    card.querySelector(".count").textContent = `${requests.length}`;
    if (!requests.length) {
      body.replaceChildren(h("div", { class: "empty" }, "Nothing in flight"));
      return;
    }
    const names = (store.uiConfig.activity || {}).session_id || [];
    const now = Date.now();
    body.replaceChildren(
      h(
        "table",
        { "data-testid": "inflight" },
        h("thead", {}, h("tr", {}, ["Model", "Path", "Session", "Elapsed", "Received", ""].map((title) => h("th", {}, title)))),
        h(
          "tbody",
          {},
          requests.map((request) =>
            h(
              "tr",
              { "data-id": request.id },
              h("td", {}, request.model),
              h("td", {}, request.req_path),
              h("td", {}, sessionOf(request, names) || "–"),
              h("td", { class: "num" }, formatDuration(Math.max(0, now - Date.parse(request.timestamp)))),
              h("td", { class: "num" }, `${formatNumber(request.resp_bytes || 0)} B`),
              h(
                "td",
                { class: "actions" },
                h(
                  "button",
                  {
                    class: "button danger",
                    type: "button",
                    "aria-label": `Cancel request ${request.id} for ${request.model}`,
                    onclick: (event) => {
                      event.target.disabled = true;
                      store.cancel(request.id).catch(() => (event.target.disabled = false));
                    },
                  },
                  "Cancel",
                ),
              ),
            ),
          ),
        ),
      ),
    );
  };
  render();
  const unsubscribe = [store.on("inflight", render), store.on("uiConfig", render)];
  const ticker = setInterval(render, 1000);
  return { card, cleanup: () => (unsubscribe.forEach((off) => off()), clearInterval(ticker)) };
}

export function activityPage(container) {
  const options = persisted("activity", { model: "", status: "all", since: "all", sort: "id", order: "desc" });
  let page = 1;
  let entries = [];
  let total = 0;
  const modelSelect = h("select", { "aria-label": "Model", "data-testid": "filter-model" });
  const statusSelect = h(
    "select",
    { "aria-label": "Status", "data-testid": "filter-status" },
    [["all", "All statuses"], ["ok", "Successful"], ["errors", "Errors"]].map(([value, label]) => h("option", { value }, label)),
  );
  const sinceSelect = h(
    "select",
    { "aria-label": "Time", "data-testid": "filter-since" },
    [["all", "Any time"], ["15m", "Last 15 minutes"], ["1h", "Last hour"], ["24h", "Last 24 hours"]].map(([value, label]) => h("option", { value }, label)),
  );
  const previous = h("button", { class: "button", type: "button", "aria-label": "Newer page" }, "‹");
  const next = h("button", { class: "button", type: "button", "aria-label": "Older page" }, "›");
  const pageLabel = h("span", { class: "count", "aria-live": "polite" });
  const wrap = h("div", { class: "table-wrap" });
  const exportCSV = h("button", { class: "button", type: "button", onclick: () => download("activity.csv", "text/csv", toCSV(entries)) }, "CSV");
  const exportMD = h("button", { class: "button", type: "button", onclick: () => download("activity.md", "text/markdown", toMarkdown(entries)) }, "Markdown");
  const card = h(
    "section",
    { class: "card activity-card", "aria-label": "Activity" },
    h(
      "div",
      { class: "card-header filters" },
      h("h2", {}, "Activity"),
      modelSelect,
      statusSelect,
      sinceSelect,
      h("span", { class: "export", role: "group", "aria-label": "Export this page" }, "Export ", exportCSV, exportMD),
      previous,
      pageLabel,
      next,
    ),
    wrap,
  );
  const inflight = inflightPanel();
  container.append(inflight.card, card);

  const fillModels = () => {
    const ids = store.models.map((model) => model.id);
    const current = options.model;
    modelSelect.replaceChildren(h("option", { value: "" }, "All models"), ...ids.map((id) => h("option", { value: id }, id)));
    modelSelect.value = ids.includes(current) ? current : "";
  };
  fillModels();
  statusSelect.value = options.status;
  sinceSelect.value = options.since;

  const query = () => {
    const params = new URLSearchParams({ limit: String(PAGE_SIZE), page: String(page), sort: options.sort, order: options.order });
    if (options.model) params.append("model", options.model);
    if (SINCE[options.since]) params.set("start", new Date(Date.now() - SINCE[options.since] * 1000).toISOString().replace(/\.\d+Z$/, "Z"));
    return params;
  };

  const shown = () =>
    entries.filter((e) => options.status === "all" || (options.status === "ok") === (e.resp_status_code === 200 && !e.error_msg));

  const render = () => {
    const visible = shown();
    const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
    pageLabel.textContent = `${formatNumber(total)} request${total === 1 ? "" : "s"} · page ${page} of ${pages}`;
    previous.disabled = page <= 1;
    next.disabled = page >= pages;
    if (!visible.length) {
      wrap.replaceChildren(h("div", { class: "empty" }, total ? "No request matches the filters" : "No requests yet"));
      return;
    }
    const now = Date.now();
    const header = COLUMNS.map(([title, key, cls]) => {
      if (!key) return h("th", { class: cls }, title);
      const sorted = options.sort === key;
      return h(
        "th",
        { class: cls, "aria-sort": sorted ? (options.order === "asc" ? "ascending" : "descending") : "none" },
        h(
          "button",
          {
            class: "sort",
            type: "button",
            onclick: () => {
              options.order = sorted && options.order === "desc" ? "asc" : "desc";
              options.sort = key;
              persist("activity", options);
              refresh();
            },
          },
          title,
          sorted ? (options.order === "asc" ? " ▲" : " ▼") : "",
        ),
      );
    });
    wrap.replaceChildren(
      h(
        "table",
        { "data-testid": "activity" },
        h("thead", {}, h("tr", {}, header)),
        h(
          "tbody",
          {},
          visible.map((e) =>
            h(
              "tr",
              { "data-id": e.id, class: e.error_msg || e.resp_status_code !== 200 ? "failed" : "" },
              h("td", { class: "num" }, e.id),
              h("td", { title: new Date(e.timestamp).toLocaleString() }, relativeTime(e.timestamp, now)),
              h("td", {}, e.model),
              h("td", { class: "hide-narrow" }, e.req_path),
              h("td", { title: e.error_msg || "" }, h("span", { class: "status", "data-ok": String(e.resp_status_code === 200 && !e.error_msg) }, e.resp_status_code)),
              h("td", { class: "num hide-narrow" }, e.tokens.input_tokens < 0 ? "–" : formatNumber(e.tokens.input_tokens)),
              h("td", { class: "num" }, e.tokens.output_tokens < 0 ? "–" : formatNumber(e.tokens.output_tokens)),
              h("td", { class: "num hide-narrow" }, e.tokens.tokens_per_second > 0 ? formatSpeed(e.tokens.tokens_per_second) : "–"),
              h("td", { class: "num" }, formatDuration(e.duration_ms)),
              h(
                "td",
                { class: "actions" },
                e.has_capture
                  ? h("button", { class: "button", type: "button", "aria-label": `Show the capture of request ${e.id}`, onclick: () => openCapture(e.id) }, "Capture")
                  : null,
              ),
            ),
          ),
        ),
      ),
    );
  };

  let loading = null;
  const refresh = async () => {
    const params = query().toString();
    loading = params;
    try {
      const response = await fetch(url(`/api/metrics/activity?${params}`));
      if (!response.ok || loading !== params) return;
      const result = await response.json();
      entries = result.data;
      total = result.total;
      render();
    } catch (error) {
      /* the connection badge already says the server is away; the next event retries */
    }
  };

  let soon = null;
  const refreshSoon = () => {
    clearTimeout(soon);
    soon = setTimeout(refresh, 250);
  };
  const changed = () => {
    options.model = modelSelect.value;
    options.status = statusSelect.value;
    options.since = sinceSelect.value;
    persist("activity", options);
    page = 1;
    refresh();
  };
  modelSelect.addEventListener("change", changed);
  statusSelect.addEventListener("change", changed);
  sinceSelect.addEventListener("change", changed);
  previous.addEventListener("click", () => ((page = Math.max(1, page - 1)), refresh()));
  next.addEventListener("click", () => ((page += 1), refresh()));

  refresh();
  const unsubscribe = [
    store.on("activity", () => page === 1 && refreshSoon()),
    store.on("models", fillModels),
    store.on("connection", (state) => state === "connected" && refreshSoon()),
  ];
  const ticker = setInterval(render, 10000); // relative times age on screen
  return () => {
    unsubscribe.forEach((off) => off());
    inflight.cleanup();
    clearInterval(ticker);
    clearTimeout(soon);
  };
}
