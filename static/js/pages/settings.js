// Settings: the theme (light, dark or the system's), the active profile
// (which changes how requests are routed), and what this llamaswap is.

import { h, persist, persisted } from "../dom.js";
import { store } from "../store.js";

export function applyTheme(choice) {
  const system = window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  document.documentElement.dataset.theme = choice === "light" || choice === "dark" ? choice : system;
}

function section(title, ...content) {
  return h("section", { class: "card", "aria-label": title }, h("div", { class: "card-header" }, h("h2", {}, title)), h("div", { class: "settings" }, ...content));
}

export function settingsPage(container) {
  const choice = persisted("theme", null) || "system";
  const themes = h(
    "div",
    { role: "radiogroup", "aria-label": "Theme", class: "choices" },
    ["light", "dark", "system"].map((value) =>
      h(
        "label",
        {},
        h("input", {
          type: "radio",
          name: "theme",
          value,
          checked: value === choice,
          onchange: () => {
            persist("theme", value === "system" ? null : value);
            applyTheme(value);
          },
        }),
        ` ${value[0].toUpperCase()}${value.slice(1)}`,
      ),
    ),
  );
  const profiles = h("div", { "data-testid": "profiles" }, "Loading…");
  const status = h("span", { class: "muted", "aria-live": "polite", "data-testid": "profile-status" }); // kept across redraws
  const build = h("div", { "data-testid": "build" }, "Loading…");
  container.append(
    h("div", { class: "model-grid" }, section("Theme", themes), section("Profile", profiles), section("About", build)),
  );

  const showProfiles = async () => {
    try {
      const response = await fetch("/api/profiles");
      const { active, profiles: list } = await response.json();
      if (!list.length) {
        profiles.replaceChildren(h("p", { class: "muted" }, "No profiles in the configuration."));
        return;
      }
      const select = h(
        "select",
        { "aria-label": "Active profile", "data-testid": "profile-select" },
        h("option", { value: "" }, "None (every model)"),
        ...list.map((profile) => h("option", { value: profile.id, selected: profile.id === active }, profile.id)),
      );
      select.value = active || "";
      select.addEventListener("change", async () => {
        const answer = await fetch("/api/profiles/active", {
          method: "PUT",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ name: select.value || null }),
        });
        status.textContent = answer.ok ? "switched" : `could not switch: HTTP ${answer.status}`;
      });
      const described = list.find((profile) => profile.id === active);
      profiles.replaceChildren(
        h("label", {}, "Active ", select),
        " ",
        status,
        described && described.description ? h("p", { class: "muted" }, described.description) : null,
      );
    } catch (error) {
      profiles.replaceChildren(h("p", { class: "muted" }, "Profiles could not be read."));
    }
  };

  const showBuild = async () => {
    try {
      const [version, hardware] = await Promise.all([fetch("/api/version"), fetch("/api/hardware")]);
      const info = await version.json();
      const rows = [["Version", info.version], ["Commit", info.commit || "–"], ["Built", info.build_date || "–"]];
      if (hardware.ok) {
        const machine = await hardware.json();
        const os = machine.operating_system || {};
        const cpu = machine.cpu || {};
        rows.push(["System", `${os.name || os.family || "?"} ${os.version || ""} (${(machine.architecture || {}).name || "?"})`]);
        rows.push(["CPU", `${cpu.model || "?"}, ${cpu.physical_core_count || "?"} cores, ${cpu.logical_thread_count || "?"} threads`]);
        rows.push(["Memory", `${((machine.memory || {}).capacity_bytes / 2 ** 30).toFixed(1)} GiB`]);
        for (const accelerator of machine.accelerators || []) {
          rows.push(["Accelerator", `${accelerator.name || accelerator.model || "GPU"} ${accelerator.memory_bytes ? (accelerator.memory_bytes / 2 ** 30).toFixed(0) + " GiB" : ""}`]);
        }
      }
      build.replaceChildren(h("table", { class: "headers" }, h("tbody", {}, rows.map(([label, value]) => h("tr", {}, h("th", {}, label), h("td", {}, value))))));
    } catch (error) {
      build.replaceChildren(h("p", { class: "muted" }, "Build information could not be read."));
    }
  };

  showProfiles();
  showBuild();
  const unsubscribe = store.on("profile", showProfiles);
  return unsubscribe;
}
