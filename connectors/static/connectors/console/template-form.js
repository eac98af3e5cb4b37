// The template page: an HTML-aware editor for the content and a live preview rendered by the
// server with a sample payload (subject and plain text as JSON; the HTML in a sandboxed frame).
"use strict";

(function () {
  const dataElement = document.getElementById("template-data");
  const form = document.getElementById("template-form");
  if (!dataElement || !form || !window.ConsoleEditor) return;
  const data = JSON.parse(dataElement.textContent);
  const field = (name) => form.elements.namedItem(name);
  const contentType = field("content_type");
  const payload = document.getElementById("preview-payload");
  const frameForm = document.getElementById("preview-frame-form");
  const frameHolder = document.getElementById("preview-frame-holder");
  let dirty = false;
  let submitting = false;
  let timer = null;
  let frames = 0;

  const editor = window.ConsoleEditor.codeEditor({
    textarea: field("content"),
    language: contentType.value === "text/html" ? "html" : "text",
    label: "Template content",
    onChange: () => {
      dirty = true;
      schedule();
    },
  });
  editor.view.dom.classList.add("template-content-editor");
  if (data.readOnly) window.ConsoleReadOnly.keepUnchanged(editor.view);

  contentType.addEventListener("change", () => {
    editor.setLanguage(contentType.value === "text/html" ? "html" : "text");
  });

  function values() {
    // Read the elements one by one: a viewer's fieldset is disabled, and FormData skips those.
    return {
      csrfmiddlewaretoken: field("csrfmiddlewaretoken").value,
      usage_type: data.usageType,
      locale: data.locale,
      subject: field("subject").value,
      content: editor.getText(),
      content_type: contentType.value,
      reply_to: field("reply_to").value,
      send_from: field("send_from").value,
      payload: payload.value,
    };
  }

  function show(id, text) {
    document.getElementById(id).textContent = text || "";
  }

  function refreshFrame(fields) {
    // A new frame each time: its first navigation replaces the blank page, so previews do not
    // pile up in the browser's history the way reloading one frame would.
    const name = `preview-frame-${++frames}`;
    const frame = document.createElement("iframe");
    frame.name = name;
    frame.title = "HTML preview of the template";
    frame.setAttribute("sandbox", "");
    frame.setAttribute("referrerpolicy", "no-referrer");
    frameHolder.replaceChildren(frame);
    frameForm.replaceChildren();
    for (const [key, value] of Object.entries(fields)) {
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = key;
      input.value = value;
      frameForm.append(input);
    }
    frameForm.target = name;
    frameForm.submit();
  }

  async function preview() {
    const fields = values();
    const body = new URLSearchParams(fields);
    let answer;
    try {
      const response = await fetch(data.previewUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": fields.csrfmiddlewaretoken, Accept: "application/json" },
        body,
      });
      answer = await response.json();
    } catch (error) {
      answer = { ok: false, error: { message: `The preview could not be loaded: ${error.message}` } };
    }
    const errorBox = document.getElementById("preview-error");
    errorBox.hidden = answer.ok;
    errorBox.textContent = answer.ok ? "" : answer.error.message;
    if (!answer.ok) return;
    show("preview-subject", answer.subject);
    show("preview-from", answer.from);
    show("preview-reply-to", answer.reply_to || "(none)");
    show("preview-text", answer.text);
    document.getElementById("preview-html-section").hidden = !answer.is_html;
    if (answer.is_html) refreshFrame(fields);
  }

  function schedule() {
    window.clearTimeout(timer);
    timer = window.setTimeout(preview, 300);
  }

  form.addEventListener("input", (event) => {
    if (event.target !== payload) dirty = true;
    schedule();
  });
  form.addEventListener("submit", () => {
    submitting = true;
  });
  window.addEventListener("beforeunload", (event) => {
    if (dirty && !submitting && !data.readOnly) {
      event.preventDefault();
      event.returnValue = "";
    }
  });
  preview();
})();
