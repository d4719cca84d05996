// mlflow-safeflavor ui: progress, polling and rendering. Plain JS, no build step.
// Everything shown from the server goes through textContent (never innerHTML): import names in a
// scan report are whatever the pickle's author wrote.
"use strict";
(function () {
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const ROOT = meta("app-root");
  const TOKEN = meta("csrf-token");
  const MAX_UPLOAD = parseInt(meta("max-upload"), 10) || 0;
  const $ = (sel) => document.querySelector(sel);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v == null) continue;
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c == null) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const clear = (node) => { node.replaceChildren(); return node; };
  const badge = (kind, text) => el("span", { class: `badge ${kind}` }, text);
  const mib = (n) => (n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`);

  async function api(path, opts = {}) {
    const init = { method: opts.method || "GET", headers: { "X-SafeFlavor-CSRF": TOKEN }, credentials: "same-origin" };
    if (opts.json !== undefined) {
      init.method = opts.method || "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.json);
    } else if (opts.method) {
      init.method = opts.method;
    }
    let resp;
    try {
      resp = await fetch(ROOT + path, init);
    } catch (e) {
      return { ok: false, status: 0, data: { message: `the page could not reach the server (${e})` } };
    }
    let data;
    try { data = await resp.json(); } catch (e) { data = { message: `HTTP ${resp.status}` }; }
    return { ok: resp.ok, status: resp.status, data };
  }

  function errorBox(message, title) {
    return el("div", { class: "message error" }, title ? el("strong", {}, `${title}: `) : null, message || "failed");
  }

  // A job panel: title, stage, elapsed seconds and a moving bar until the job ends.
  async function runJob(started, container, onDone) {
    const first = await started;
    if (!first.ok) {
      container.prepend(errorBox(first.data.message, first.data.error_code || `HTTP ${first.status}`));
      return null;
    }
    let job = first.data;
    const stage = el("div", { class: "stage" });
    const bar = el("div", { class: "bar" }, el("span"));
    const title = el("strong", {}, job.title);
    const panel = el("div", { class: "job", "data-job": job.id, "data-state": job.state }, title, " ", stage, bar);
    container.prepend(panel);
    const show = () => {
      panel.setAttribute("data-state", job.state);
      stage.textContent = `${job.state} · ${job.stage} · ${job.elapsed}s`;
    };
    show();
    while (job.state === "queued" || job.state === "running") {
      await sleep(500);
      const r = await api(`/api/jobs/${job.id}`);
      if (!r.ok) { panel.append(errorBox(r.data.message, "polling failed")); return null; }
      job = r.data;
      show();
    }
    bar.remove();
    if (job.state === "failed") {
      panel.append(errorBox(job.error.message, job.error.type));
    }
    if (onDone) onDone(job, panel);
    return job;
  }

  // ---------------------------------------------------------------- rendering
  function renderScan(scan, label) {
    const box = $("#scan-result");
    box.hidden = false;
    const verdict = $("#verdict");
    verdict.className = `verdict ${scan.ok ? "ok" : "bad"}`;
    verdict.textContent = scan.ok
      ? "Every import is allowed — nothing was unpickled to find out"
      : "Refused before unpickling — nothing was loaded";
    $("#scan-summary").textContent =
      `${label} · ${scan.container}, protocol ${scan.protocol ?? "?"}, ${scan.size} bytes · ${scan.imports.length} distinct imports`;
    const msg = $("#scan-message");
    msg.hidden = !scan.message;
    msg.textContent = scan.message || "";
    const body = clear($("#imports tbody"));
    for (const f of scan.imports) {
      body.append(el("tr", { class: f.allowed ? "allowed" : "refused" },
        el("td", { class: "mono" }, f.name), el("td", { class: "small" }, f.where), el("td", {}, f.count),
        el("td", {}, f.allowed ? badge("ok", "allowed") : badge("bad", "refused")),
        el("td", { class: "reason" }, f.reason)));
    }
    const problems = clear($("#problems"));
    for (const p of scan.problems) problems.append(el("li", { class: "problem" }, p));
    $("#fickling").textContent = scan.fickling
      ? `fickling (second opinion, for reference only — the decision above is ours): ${scan.fickling.severity}` : "";
    $("#convert-area").hidden = !scan.ok;
    $("#convert-result").hidden = true;
  }

  function renderNoPickle(result) {
    const box = $("#scan-result");
    box.hidden = false;
    const verdict = $("#verdict");
    verdict.className = "verdict ok";
    verdict.textContent = `No pickle to scan: stored as ${result.serialization} by MLflow's ${result.flavor} flavor`;
    $("#scan-summary").textContent = `${result.uri} · conversion rebuilds it from the native file, in an isolated process`;
    $("#scan-message").hidden = true;
    clear($("#imports tbody"));
    clear($("#problems"));
    $("#fickling").textContent = "";
    $("#convert-area").hidden = false;
  }

  function renderVerify(container, v, tagCheck) {
    clear(container);
    const failed = v.checks.filter((c) => !c.ok).map((c) => c.name);
    container.append(el("div", { class: `verdict ${v.ok ? "ok" : "bad"}`, id: "verify-verdict" },
      v.ok ? "Verify: every check passed" : `Verify: FAILED (${failed.join(", ")})`));
    if (v.codec) container.append(el("p", { class: "small" }, `codec ${v.codec} · model class ${v.model_class}`));
    const rows = v.checks.map((c) => el("tr", { class: c.ok ? "pass" : "refused" },
      el("td", { class: "mono" }, c.name), el("td", {}, c.ok ? badge("ok", "PASS") : badge("bad", "FAIL")),
      el("td", { class: "reason" }, c.detail)));
    if (tagCheck) {
      rows.push(el("tr", { class: tagCheck.ok ? "pass" : "refused" },
        el("td", { class: "mono" }, "safeflavor.verified"), el("td", {}, tagCheck.ok ? badge("ok", "PASS") : badge("bad", "FAIL")),
        el("td", { class: "reason" }, tagCheck.detail)));
    }
    container.append(el("table", { class: "checks" },
      el("thead", {}, el("tr", {}, el("th", {}, "Check"), el("th", {}, "Result"), el("th", {}, "Detail"))),
      el("tbody", {}, ...rows)));
    for (const [name, digest] of Object.entries(v.files || {})) {
      container.append(el("div", { class: "mono small muted" }, `${name}  ${digest}`));
    }
    if (v.tree_digest) container.append(el("p", { class: "mono small" }, `artifact digest: ${v.tree_digest}`));
  }

  function renderConversion(job) {
    const out = $("#convert-result");
    out.hidden = false;
    const c = job.result.conversion;
    $("#convert-summary").textContent = c.summary;
    const facts = clear($("#convert-facts"));
    const add = (k, v) => facts.append(el("dt", {}, k), el("dd", {}, v));
    add("Model class", c.model_class);
    add("Source format", c.source_format);
    add("Identical", `${c.methods.join(", ")} on ${c.rows_compared} rows`);
    add("Took", `${c.seconds.toFixed(1)} s`);
    add("Zip", mib(job.result.zip_bytes));
    const link = $("#download-link");
    link.classList.remove("disabled");
    link.textContent = `Download ${job.download_name}`;
    link.href = ROOT + job.download_url;
    link.setAttribute("download", job.download_name);
    link.onclick = () => setTimeout(() => { link.classList.add("disabled"); link.textContent = "Downloaded (deleted from the server)"; }, 300);
    renderVerify($("#verify-report"), job.result.verify, null);
  }

  // ---------------------------------------------------------------- check page
  function initCheck() {
    let source = null; // {upload_id} or {uri}
    const jobs = $("#job-area");
    const form = $("#upload-form");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const file = $("#file").files[0];
      const sample = $("#sample").files[0];
      clear(jobs);
      if (!file) { jobs.append(errorBox("choose a .pkl, .pickle or .joblib file first")); return; }
      const total = file.size + (sample ? sample.size : 0);
      if (MAX_UPLOAD && total > MAX_UPLOAD) {
        jobs.append(errorBox(`${file.name} is ${mib(total)}, over this page's ${mib(MAX_UPLOAD)} upload limit; nothing was sent.`, "too large"));
        return;
      }
      const bar = $("#upload-bar");
      const status = $("#upload-status");
      const button = $("#scan-button");
      button.disabled = true;
      bar.hidden = false;
      bar.firstElementChild.style.width = "0%";
      $("#scan-result").hidden = true;
      $("#convert-result").hidden = true;
      const xhr = new XMLHttpRequest();
      xhr.open("POST", ROOT + "/api/scan");
      xhr.setRequestHeader("X-SafeFlavor-CSRF", TOKEN);
      xhr.responseType = "json";
      xhr.upload.onprogress = (ev) => {
        if (!ev.lengthComputable) return;
        const pct = Math.round((100 * ev.loaded) / ev.total);
        bar.firstElementChild.style.width = `${pct}%`;
        status.textContent = pct < 100 ? `uploading… ${pct}%` : "scanning statically (nothing is unpickled)…";
      };
      xhr.onloadend = () => {
        button.disabled = false;
        bar.hidden = true;
        const data = xhr.response || { message: xhr.status ? `HTTP ${xhr.status}` : "the upload was cut off (over the limit?)" };
        if (xhr.status !== 200) {
          status.textContent = "";
          jobs.append(errorBox(data.message, data.error_code || "upload refused"));
          return;
        }
        status.textContent = `scanned ${data.file} (${data.size} bytes)${data.sample ? ` with sample rows ${data.sample}` : ""}`;
        source = data.upload_id ? { upload_id: data.upload_id } : null;
        $("#synthetic-label").hidden = true;
        renderScan(data.scan, data.file);
      };
      xhr.send(new FormData(form));
    });

    $("#uri-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      clear(jobs);
      $("#scan-result").hidden = true;
      $("#convert-result").hidden = true;
      const uri = $("#uri").value.trim();
      await runJob(api("/api/scan-uri", { json: { uri } }), jobs, (job) => {
        if (job.state !== "done") return;
        const r = job.result;
        source = r.convertible ? { uri: r.uri } : null;
        $("#synthetic-label").hidden = false;
        if (r.scan) renderScan(r.scan, r.uri);
        else renderNoPickle(r);
      });
    });

    $("#convert-button").addEventListener("click", async () => {
      if (!source) return;
      const button = $("#convert-button");
      button.disabled = true;
      const body = source.upload_id ? { upload_id: source.upload_id } : { uri: source.uri, synthetic: $("#synthetic").checked };
      if (source.upload_id) source = null; // an upload is used once (and deleted after)
      await runJob(api("/api/convert", { json: body }), jobs, (job) => {
        if (job.state === "done") renderConversion(job);
      });
      button.disabled = !source;
    });
  }

  // ---------------------------------------------------------------- version page
  function initVersion() {
    const h = $("#version-title");
    const base = `/api/registry/${encodeURIComponent(h.dataset.name)}/${encodeURIComponent(h.dataset.version)}`;
    const verify = () => runJob(api(`${base}/verify`, { method: "POST" }), clear($("#verify-jobs")), (job) => {
      if (job.state === "done") renderVerify($("#verify-report"), job.result.verify, job.result.tag_check);
    });
    $("#verify-button").addEventListener("click", verify);
    verify();

    $("#promote-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const button = $("#promote-button");
      button.disabled = true;
      await runJob(api(`${base}/promote`, { json: { alias: $("#alias").value.trim() } }), $("#promote-jobs"), (job, panel) => {
        if (job.state === "done") {
          panel.append(el("div", { class: "message ok" }, job.result.message),
            el("a", { href: "" }, "Reload to see the new tags"));
        }
      });
      button.disabled = false;
    });

    $("#convert-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const button = $("#convert-version-button");
      button.disabled = true;
      const body = { target: $("#target").value.trim(), synthetic: $("#synthetic").checked };
      await runJob(api(`${base}/convert`, { json: body }), $("#convert-jobs"), (job, panel) => {
        if (job.state !== "done") return;
        const r = job.result;
        panel.append(el("div", { class: "message ok" }, r.conversion.summary),
          el("a", { href: `${ROOT}/registry/${encodeURIComponent(r.new_name)}/${encodeURIComponent(r.new_version)}`, class: "new-version" },
            `Open ${r.new_name} version ${r.new_version}`));
      });
      button.disabled = false;
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const pageName = document.body.dataset.page;
    if (pageName === "check") initCheck();
    if (pageName === "version") initVersion();
  });
})();
