// The connector page: the JSON editor, kind and preset switching, the problem list, Send test of
// the unsaved config, and a warning before leaving with unsaved edits. Page data comes from the
// #editor-data JSON script element (no inline scripts: the console's CSP forbids them).
"use strict";

(function () {
  const dataElement = document.getElementById("editor-data");
  const textarea = document.getElementById("id_config");
  if (!dataElement || !textarea || !window.ConsoleEditor) return;
  const data = JSON.parse(dataElement.textContent);
  const form = textarea.form || document.getElementById("connector_form");
  const kindSelect = document.getElementById("id_kind");
  const presetSelect = document.getElementById("id_preset");
  const problems = document.getElementById("config-problems");
  const status = document.getElementById("editor-status");
  let kind = data.kind;
  let loadedText = textarea.value; // the config as it came: from the server, or an example
  let fieldsEdited = false;
  let submitting = false;
  const configEdited = () => editor.getText() !== loadedText;

  // The problem list under the editor ------------------------------------------------------

  // The schema library quotes in `backquotes`, sometimes doubled around a list ("``a` or `b``").
  function messageNodes(text) {
    const parts = String(text).replace(/``/g, "`").split("`");
    return parts.map((part, i) => {
      if (!(i % 2)) return document.createTextNode(part);
      const code = document.createElement("code");
      code.textContent = part;
      return code;
    });
  }

  // After a submit the server's wording and the live check's may both describe one problem:
  // where the server marked a line, its words stand for that line.
  function withoutRepeats(list) {
    const serverLines = new Set(list.filter((p) => p.source === "server").map((p) => p.line));
    return list.filter((p) => p.source === "server" || !serverLines.has(p.line));
  }

  function showProblems(found) {
    problems.replaceChildren();
    const list = withoutRepeats(found);
    if (!list.length) return;
    const heading = document.createElement("h3");
    heading.textContent = list.length === 1 ? "1 problem" : `${list.length} problems`;
    const items = document.createElement("ul");
    items.className = "problem-list";
    for (const problem of list) {
      const item = document.createElement("li");
      const jump = document.createElement("button");
      jump.type = "button";
      jump.className = "link-button";
      jump.textContent = `Line ${problem.line}, column ${problem.column}`;
      jump.addEventListener("click", () => editor.focusAt(problem.line, problem.column));
      item.append(jump, ": ", ...messageNodes(problem.message));
      if (problem.source === "server") item.classList.add("from-server");
      items.append(item);
    }
    problems.append(heading, items);
  }

  const editor = window.ConsoleEditor.jsonEditor({
    textarea,
    schema: data.schemas[kind],
    label: "Config (JSON)",
    onDiagnostics: showProblems,
  });
  editor.view.dom.classList.add("config-editor-view");
  if (data.readOnly) window.ConsoleReadOnly.keepUnchanged(editor.view);
  if (data.errors && data.errors.length) editor.setServerErrors(data.errors);

  const formatButton = document.getElementById("format-config");
  if (formatButton) {
    formatButton.hidden = false;
    formatButton.addEventListener("click", () => {
      const outcome = editor.format();
      status.textContent = outcome.message;
    });
  }

  // Kind and preset: refill the editor with the matching full example ----------------------

  function showSideFor(nextKind, preset) {
    for (const list of document.querySelectorAll(".reference[data-kind]")) {
      list.hidden = list.dataset.kind !== nextKind;
    }
    for (const notes of document.querySelectorAll(".preset-notes[data-preset]")) {
      notes.hidden = nextKind !== "smtp" || notes.dataset.preset !== preset;
    }
    if (presetSelect) {
      presetSelect.disabled = nextKind !== "smtp";
      const row = presetSelect.closest(".form-row");
      if (row) row.classList.toggle("disabled", nextKind !== "smtp");
    }
  }

  function loadExample(nextKind, preset) {
    const examples = (data.examples || {})[nextKind] || {};
    const text = examples[preset] ?? examples[""];
    if (text === undefined) return;
    if (configEdited() && !window.confirm("Replace the config in the editor with the example? Your edits to it will be lost.")) {
      return false;
    }
    kind = nextKind;
    editor.setSchema(data.schemas[kind]);
    editor.setText(text);
    loadedText = text;
    status.textContent = `Loaded the ${preset ? presetSelect.selectedOptions[0].textContent : nextKind.toUpperCase()} example.`;
    return true;
  }

  if (data.isNew && kindSelect) {
    let shown = { kind: kindSelect.value, preset: presetSelect ? presetSelect.value : "" };
    const onPick = () => {
      const next = { kind: kindSelect.value, preset: kindSelect.value === "smtp" && presetSelect ? presetSelect.value : "" };
      if (loadExample(next.kind, next.preset) === false) {
        kindSelect.value = shown.kind;
        if (presetSelect) presetSelect.value = shown.preset;
        return;
      }
      shown = next;
      showSideFor(next.kind, next.preset);
    };
    kindSelect.addEventListener("change", onPick);
    if (presetSelect) presetSelect.addEventListener("change", onPick);
    showSideFor(shown.kind, shown.preset);
  }

  // Unsaved edits: ask before leaving --------------------------------------------------------

  if (form) {
    form.addEventListener("input", (event) => {
      // The Send test fields belong to their own form; the kind and preset pick an example.
      const target = event.target;
      const inSendTest = target.closest && target.closest(".send-test");
      if (!inSendTest && !target.getAttribute("form") && target !== kindSelect && target !== presetSelect) {
        fieldsEdited = true;
      }
    });
    form.addEventListener("submit", () => {
      submitting = true;
    });
  }
  window.addEventListener("beforeunload", (event) => {
    if ((fieldsEdited || configEdited()) && !submitting && !data.readOnly) {
      event.preventDefault();
      event.returnValue = "";
    }
  });

  // Send test --------------------------------------------------------------------------------

  const testForm = document.getElementById("send-test-form");
  const result = document.getElementById("send-test-result");
  const button = document.getElementById("send-test-button");
  if (!testForm || !data.sendTestUrl) return;
  const payloadEditor = window.ConsoleEditor.plainJsonEditor({
    textarea: document.getElementById("send-test-payload"),
    label: "Sample payload (JSON)",
  });

  function csrfToken() {
    const input = form && form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function definition(list, term, value) {
    if (value === undefined || value === null || value === "") return;
    list.append(element("dt", term), element("dd", String(value)));
  }

  // The hints quote config keys in `backquotes`: show those as code.
  function withCode(text) {
    const parts = String(text).split("`");
    return parts.map((part, i) => (i % 2 ? element("code", part) : document.createTextNode(part)));
  }

  function transcript(lines, open) {
    if (!lines || !lines.length) return [];
    const details = element("details");
    details.open = Boolean(open);
    const conversation = element("pre", lines.join("\n"), "transcript");
    conversation.tabIndex = 0; // it scrolls: the keyboard must reach it
    details.append(element("summary", "SMTP conversation (secrets redacted)"), conversation);
    return [details];
  }

  function showOutcome(answer, httpStatus) {
    result.replaceChildren();
    const box = element("div", null, answer.ok ? "outcome outcome-ok" : "outcome outcome-failed");
    if (answer.ok) {
      const r = answer.result || {};
      box.append(element("h3", "Sent"));
      const list = element("dl");
      definition(list, "Server reply", r.server_reply);
      definition(list, "Message ID", r.message_id);
      definition(list, "Elapsed", r.elapsed_ms !== undefined ? `${r.elapsed_ms} ms` : answer.elapsed_ms + " ms");
      box.append(list);
      for (const warning of r.warnings || []) box.append(element("p", warning, "warning"));
      box.append(...transcript(r.transcript));
    } else if (answer.failure) {
      const f = answer.failure;
      box.append(element("h3", f.permanent === false ? "Not sent (temporary failure)" : "Not sent"));
      const message = element("p", null, "failure-message");
      message.append(...withCode(f.message));
      box.append(message);
      const list = element("dl");
      definition(list, "Server code", f.code);
      definition(list, "Server said", f.server_text);
      definition(list, "Elapsed", answer.elapsed_ms !== undefined && answer.elapsed_ms !== null ? `${answer.elapsed_ms} ms` : "");
      box.append(list);
      if (f.hint) {
        const hint = element("p", null, "hint");
        hint.append(element("strong", "What to try: "), ...withCode(f.hint));
        box.append(hint);
      }
      box.append(...transcript(f.transcript, true));
    } else {
      const e = answer.error || { message: `The console answered ${httpStatus}.` };
      box.append(element("h3", "Not sent"), element("p", e.message, "failure-message"));
      if (answer.errors) editor.setServerErrors(answer.errors);
    }
    if (answer.delivery && answer.delivery.url) {
      const link = element("a", "See it in the delivery log");
      link.href = answer.delivery.url;
      const paragraph = element("p");
      paragraph.append(link);
      box.append(paragraph);
    }
    result.append(box);
  }

  testForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const to = document.getElementById("send-test-to");
    if (!to.reportValidity()) return;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    result.replaceChildren(element("p", "Sending… (at most about 20 seconds)", "muted"));
    const body = {
      kind,
      config: editor.getText(),
      to: to.value,
      type: document.getElementById("send-test-type").value,
      locale: document.getElementById("send-test-locale").value,
      payload: payloadEditor.getText(),
    };
    try {
      const response = await fetch(testForm.action, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), Accept: "application/json" },
        body: JSON.stringify(body),
      });
      let answer;
      try {
        answer = await response.json();
      } catch (error) {
        answer = { ok: false, error: { message: `The console answered ${response.status} ${response.statusText}.` } };
      }
      showOutcome(answer, response.status);
    } catch (error) {
      showOutcome({ ok: false, error: { message: `The test could not reach the console: ${error.message}` } }, 0);
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  });
})();
