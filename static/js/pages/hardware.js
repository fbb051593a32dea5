// Hardware: what llamaswap found on this machine at start-up (GET
// /api/hardware) -- system, CPU and accelerators -- and the same as plain
// text to paste into a bug report.

import { h, pairsTable, url } from "../dom.js";

const shown = (value) => (value === null || value === undefined || value === "" ? "Not detected" : String(value));
const titleCase = (value) => String(value || "").replaceAll("_", " ").replace(/\b\w/g, (letter) => letter.toUpperCase());
const capacity = (bytes) => (bytes ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : "Not detected");

function facts(machine) {
  const os = machine.operating_system || {};
  const cpu = machine.cpu || {};
  const environment = machine.environment || {};
  return {
    System: [
      ["Operating system", [os.name || titleCase(os.family), os.version].filter(Boolean).join(" ")],
      ["Kernel", shown(os.kernel)],
      ["Architecture", shown((machine.architecture || {}).name)],
      ["Environment", `${titleCase(environment.kind)}${environment.name ? ` (${environment.name})` : ""}`],
      ["Memory", capacity((machine.memory || {}).capacity_bytes)],
    ],
    CPU: [
      ["Model", shown(cpu.model)],
      ["Vendor", shown(cpu.vendor)],
      ["Sockets", shown(cpu.socket_count)],
      ["Physical cores", shown(cpu.physical_core_count)],
      ["Logical threads", shown(cpu.logical_thread_count)],
    ],
    accelerators: (machine.accelerators || []).map((accelerator) => ({
      title: accelerator.model || `${titleCase(accelerator.kind)} ${accelerator.index + 1}`,
      rows: [
        ["Type", titleCase(accelerator.kind)],
        ["Vendor", shown(accelerator.vendor)],
        ["Architecture", shown(accelerator.architecture)],
        ["Memory", `${capacity((accelerator.memory || {}).capacity_bytes)} (${titleCase((accelerator.memory || {}).kind)})`],
        ["Driver", accelerator.driver ? [accelerator.driver.name, accelerator.driver.version].filter(Boolean).join(" ") || "Not detected" : "Not detected"],
        ["Power limit", accelerator.power_limit_watts == null ? "Not detected" : `${accelerator.power_limit_watts} W`],
      ],
    })),
  };
}

export function hardwareSummary(machine) {
  const { System, CPU, accelerators } = facts(machine);
  const block = (title, rows) => [title, ...rows.map(([label, value]) => `  ${label}: ${value}`)];
  const lines = ["Hardware summary", "", ...block("System", System), "", ...block("CPU", CPU), "", `Accelerators (${accelerators.length})`];
  if (!accelerators.length) lines.push("  None detected or exposed to this process.");
  accelerators.forEach((accelerator, index) => lines.push(...block(`  ${index + 1}: ${accelerator.title}`, accelerator.rows.map(([label, value]) => [`  ${label}`, value]))));
  return lines.join("\n");
}

function section(title, ...content) {
  return h("section", { class: "card", "aria-label": title }, h("div", { class: "card-header" }, h("h2", {}, title)), h("div", { class: "settings" }, ...content));
}

export function hardwarePage(container) {
  const body = h("div", { class: "model-grid", "data-testid": "hardware" }, h("p", { class: "muted" }, "Loading the hardware profile…"));
  container.append(body);
  let alive = true;
  (async () => {
    let machine;
    try {
      const response = await fetch(url("/api/hardware"));
      if (!response.ok) throw new Error(((await response.json().catch(() => ({}))).error || {}).message || `HTTP ${response.status}`);
      machine = await response.json();
    } catch (error) {
      if (alive) body.replaceChildren(section("Hardware", h("p", { class: "muted" }, `Hardware detection is unavailable: ${error.message}`)));
      return;
    }
    if (!alive) return;
    const { System, CPU, accelerators } = facts(machine);
    const summary = hardwareSummary(machine);
    const status = h("span", { class: "muted", "aria-live": "polite" });
    const copy = h("button", { class: "button", type: "button" }, "Copy");
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(summary);
        status.textContent = "copied";
      } catch (error) {
        status.textContent = "the browser refused the clipboard: select the text instead";
      }
    });
    body.replaceChildren(
      section("System", pairsTable(System)),
      section("CPU", pairsTable(CPU)),
      section(
        `Accelerators (${accelerators.length})`,
        accelerators.length
          ? accelerators.map((accelerator) => h("div", { class: "accelerator" }, h("h3", {}, accelerator.title), pairsTable(accelerator.rows)))
          : h("p", { class: "muted" }, "No accelerators were detected or exposed to this process."),
      ),
      section(
        "As text",
        h("p", { class: "muted" }, "For bug reports and support requests. ", copy, " ", status),
        h("textarea", { class: "summary", readonly: true, rows: 16, "aria-label": "Hardware summary as text", "data-testid": "hardware-text" }, summary),
      ),
    );
  })();
  return () => {
    alive = false;
  };
}
