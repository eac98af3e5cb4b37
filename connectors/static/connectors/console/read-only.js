// A code editor shown read-only (to a viewer) that the keyboard can still reach: it takes the
// focus, so it scrolls and a screen reader reads it; the cursor moves, text can be selected and
// copied; nothing changes the text. Used by the connector and template pages.
"use strict";

window.ConsoleReadOnly = {
  keepUnchanged(view) {
    const content = view.contentDOM;
    content.setAttribute("contenteditable", "false");
    content.setAttribute("aria-readonly", "true");
    content.tabIndex = 0; // not editable is not focusable, unless told so
    const moving = new Set([
      "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "PageUp", "PageDown", "Home", "End",
    ]);
    const harmless = new Set(["Tab", "Escape", "Shift", "Control", "Alt", "Meta"]);
    const copying = new Set(["a", "c"]); // select all, copy
    const allowed = (event) =>
      harmless.has(event.key) ||
      (moving.has(event.key) && !event.altKey) || // Alt-arrows move lines
      ((event.ctrlKey || event.metaKey) && !event.altKey && !event.shiftKey &&
        copying.has(event.key.toLowerCase()));
    // Caught on the way down, so that the editor's own handlers (its keymap, paste, drop) on the
    // content never see what would change the text.
    view.dom.addEventListener("keydown", (event) => {
      if (!allowed(event)) event.stopPropagation();
    }, true);
    for (const type of ["beforeinput", "paste", "cut", "drop"]) {
      view.dom.addEventListener(type, (event) => {
        event.preventDefault();
        event.stopPropagation();
      }, true);
    }
  },
};
