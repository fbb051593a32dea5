// Settings: the theme (light, dark or the system's), capability tags on the
// Models page, the active profile (which changes how requests are routed),
// and which llamaswap this is.

import { h, pairsTable, persist, persisted, url } from "../dom.js";
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
  const tags = h("input", { type: "checkbox", checked: persisted("capabilityTags", false), "data-testid": "capability-tags-switch" });
  tags.addEventListener("change", () => persist("capabilityTags", tags.checked));
  const modelsPage = h(
    "div",
    {},
    h("label", {}, tags, " Show capability tags"),
    h("p", { class: "muted" }, "Badges next to each model on the Models page: vision, tools, speech, context length, aliases."),
  );
  container.append(
    h(
      "div",
      { class: "model-grid" },
      section("Theme", themes),
      section("Models page", modelsPage),
      section("Profile", profiles),
      section("About", build),
    ),
  );

  const showProfiles = async () => {
    try {
      const response = await fetch(url("/api/profiles"));
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
        const answer = await fetch(url("/api/profiles/active"), {
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
      const info = await (await fetch(url("/api/version"))).json();
      const rows = [["Version", info.version], ["Commit", info.commit ? info.commit.slice(0, 7) : "–"], ["Built", info.build_date || "–"]];
      build.replaceChildren(
        pairsTable(rows),
        h("p", {}, h("a", { href: url("/ui/hardware"), "data-page": "hardware" }, "This machine's hardware")),
      );
    } catch (error) {
      build.replaceChildren(h("p", { class: "muted" }, "Build information could not be read."));
    }
  };

  showProfiles();
  showBuild();
  const unsubscribe = store.on("profile", showProfiles);
  return unsubscribe;
}
