// The UI's state, fed by the /api/events stream.
//
// On every (re)connection the server sends the log histories, the model list
// and all stored metrics, so a reconnect replaces what we have instead of
// appending to it: the UI always shows what the server knows.

import { modelPath, url } from "./dom.js";

const LOG_LIMIT = 200 * 1024; // characters kept per log panel
const METRICS_LIMIT = 2000;
const BACKOFF_MIN = 500;
const BACKOFF_MAX = 10000;

class Store {
  constructor() {
    this.connection = "connecting";
    this.models = [];
    this.metrics = [];
    this.logs = { proxy: "", upstream: "" };
    this.inflight = new Map(); // in-flight requests by id
    this.uiConfig = { activity: { session_id: [] } };
    this.listeners = new Map();
    this.source = null;
    this.backoff = BACKOFF_MIN;
    this.retryTimer = null;
    this.fresh = null;
  }

  on(topic, listener) {
    if (!this.listeners.has(topic)) this.listeners.set(topic, new Set());
    this.listeners.get(topic).add(listener);
    return () => this.listeners.get(topic).delete(listener);
  }

  emit(topic, detail) {
    for (const listener of this.listeners.get(topic) || []) listener(detail);
  }

  setConnection(state) {
    if (this.connection !== state) {
      this.connection = state;
      this.emit("connection", state);
    }
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.setConnection("connecting");
    const source = new EventSource(url("/api/events"));
    this.source = source;
    // The first logData of each source and the first metrics message after
    // connecting are full histories.
    this.fresh = { proxy: true, upstream: true, metrics: true };
    source.onopen = () => {
      this.backoff = BACKOFF_MIN;
      this.setConnection("connected");
    };
    source.onmessage = (event) => this.receive(event.data);
    source.onerror = () => {
      source.close();
      if (this.source !== source) return;
      this.source = null;
      this.setConnection("disconnected");
      this.retryTimer = setTimeout(() => this.connect(), this.backoff);
      this.backoff = Math.min(BACKOFF_MAX, this.backoff * 2);
    };
  }

  receive(raw) {
    let envelope;
    try {
      envelope = JSON.parse(raw);
    } catch (error) {
      return;
    }
    let data;
    try {
      data = JSON.parse(envelope.data);
    } catch (error) {
      return;
    }
    if (envelope.type === "modelStatus") {
      this.models = data;
      this.emit("models", data);
    } else if (envelope.type === "logData") {
      this.appendLog(data.source, data.data);
    } else if (envelope.type === "activity") {
      this.emit("activity", data.id);
    } else if (envelope.type === "inflight") {
      if (data.operation === "snapshot") {
        this.inflight = new Map((data.requests || []).map((request) => [request.id, request]));
      } else if (data.operation === "upsert" && data.request) {
        this.inflight.set(data.request.id, data.request);
      } else if (data.operation === "remove") {
        this.inflight.delete(data.id);
      }
      this.emit("inflight", this.inflight);
    } else if (envelope.type === "profileChanged") {
      this.emit("profile", data.active);
    } else if (envelope.type === "uiConfig") {
      this.uiConfig = data;
      this.emit("uiConfig", data);
    } else if (envelope.type === "metrics") {
      if (this.fresh.metrics) {
        this.fresh.metrics = false;
        this.metrics = data;
      } else {
        this.metrics = this.metrics.concat(data);
      }
      if (this.metrics.length > METRICS_LIMIT) this.metrics = this.metrics.slice(-METRICS_LIMIT);
      this.emit("metrics", this.metrics);
    }
  }

  appendLog(source, text) {
    if (!(source in this.logs)) return;
    let log = this.fresh[source] ? text : this.logs[source] + text;
    this.fresh[source] = false;
    if (log.length > LOG_LIMIT) {
      const cut = log.indexOf("\n", log.length - LOG_LIMIT);
      log = log.slice(cut >= 0 ? cut + 1 : log.length - LOG_LIMIT);
    }
    this.logs[source] = log;
    this.emit("log:" + source, log);
  }

  async cancel(id) {
    const response = await fetch(url(`/api/inflight/${encodeURIComponent(id)}/cancel`), { method: "POST" });
    if (!response.ok) throw new Error(`cancelling ${id} failed: HTTP ${response.status}`);
  }

  async loadModel(id) {
    const response = await fetch(url(`/upstream/${modelPath(id)}/`));
    await response.arrayBuffer();
    if (!response.ok && response.status >= 500) throw new Error(`loading ${id} failed: HTTP ${response.status}`);
  }

  async unloadModel(id) {
    const response = await fetch(url(`/api/models/unload/${modelPath(id)}`), { method: "POST" });
    if (!response.ok) throw new Error(`unloading ${id} failed: HTTP ${response.status}`);
  }

  async unloadAll() {
    const response = await fetch(url("/api/models/unload"), { method: "POST" });
    if (!response.ok) throw new Error(`unloading failed: HTTP ${response.status}`);
  }
}

export const store = new Store();
