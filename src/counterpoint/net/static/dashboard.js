// The live dashboard of a served counterpoint run.
//
// It follows WS api/live (a snapshot, then what changed) and draws the view. Everything
// from the run is put on the page as text (textContent, attributes), never as HTML.
// Nothing of the run is shown before signing in: the token (typed in, or #token=... in the
// address, which never reaches the server and is taken off the address at once) is sent
// once to POST login, which answers with an HttpOnly session cookie; the page never keeps
// the token. The cookie then goes with every API call and the live feed. An operator can
// act (POSTs); a viewer only watches.
"use strict";

(() => {
  const STATES = ["pending", "ready", "running", "retrying", "completed", "failed", "blocked",
    "cancelled"];
  const PASSED = new Set(["allowed", "completed"]);
  const MAX_ROWS = 500;      // task rows drawn at once (the filter finds the others)
  const MAX_BARS = 150;      // timeline rows: the latest tasks started
  const SVG = "http://www.w3.org/2000/svg";

  const ui = {
    view: null,           // the latest view: sections, and tasks by id
    tasks: new Map(),
    order: [],            // task ids in plan order
    skew: 0,              // server clock minus browser clock, seconds
    operator: null,       // the operator's name (a viewer: null)
    user: null,           // {name, role} once signed in
    socket: null,
    retry: 1,
    finished: false,
    drawn: {},            // the section objects last drawn (redraw only what changed)
    scheduled: false,
  };

  const $ = (id) => document.getElementById(id);

  // -- building the page safely ----------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "style") Object.assign(node.style, value);  // CSSOM: allowed by the CSP
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Replace a container's children, keeping what the person was typing and where the
  // focus was (elements marked with data-key).
  function rebuild(container, children) {
    const values = new Map();
    container.querySelectorAll("[data-key]").forEach((n) => {
      if ("value" in n && n.value) values.set(n.dataset.key, n.value);
    });
    const active = document.activeElement;
    const focused = active && container.contains(active) ? active.dataset.key : undefined;
    container.replaceChildren(...children);
    container.querySelectorAll("[data-key]").forEach((n) => {
      if (values.has(n.dataset.key) && "value" in n) n.value = values.get(n.dataset.key);
      if (focused && n.dataset.key === focused) n.focus();
    });
  }

  function badge(text, kind) {
    return el("span", { class: `badge s-${kind || text}`, text: text.replace(/_/g, " ") });
  }

  // -- time ----------------------------------------------------------------------------

  const now = () => Date.now() / 1000 + ui.skew;

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
    return `${Math.floor(h / 24)}d ${h % 24}h`;
  }

  function ago(ts) {
    if (!ts) return "–";
    return `${duration(now() - ts)} ago`;
  }

  // A text that says how long ago ``ts`` was; the clock keeps it current.
  function since(tag, prefix, ts, props) {
    return el(tag, { ...props, "data-since": ts, "data-prefix": prefix, text: prefix + ago(ts) });
  }

  function elapsed(task) {
    if (!task.started) return null;
    return (task.ended || (task.state === "running" ? now() : task.started)) - task.started;
  }

  // -- the live feed --------------------------------------------------------------------

  function connect() {
    if (!ui.user || ui.socket) return;
    const url = new URL("api/live", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    ui.socket = socket;
    setConnection("connecting…", "connecting");
    socket.onopen = () => { ui.retry = 1; setConnection("live", "live"); };
    socket.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      receive(message);
    };
    socket.onclose = async (event) => {
      if (ui.socket !== socket) return;
      ui.socket = null;
      if (event.code !== 4000 && !ui.finished && !(await stillSignedIn())) return;
      if (event.code === 4000 || ui.finished) {
        ui.finished = true;
        setConnection("run finished: the server has stopped", "finished");
      } else {
        setConnection(`disconnected; retrying in ${ui.retry}s`, "down");
      }
      setTimeout(connect, ui.retry * 1000);
      ui.retry = Math.min(ui.retry * 2, 15);
    };
  }

  function setConnection(text, kind) {
    const node = $("connection");
    node.textContent = text;
    node.className = `connection c-${kind}`;
  }

  function receive(message) {
    if (typeof message.now === "number") ui.skew = message.now - Date.now() / 1000;
    if (message.type === "snapshot") {
      ui.view = {};
      ui.tasks = new Map();
      ui.order = [];
      for (const task of message.tasks || []) {
        ui.tasks.set(task.id, task);
        ui.order.push(task.id);
      }
      ui.drawn = {};
    } else if (message.type !== "update" || !ui.view) {
      return;
    }
    for (const [key, value] of Object.entries(message)) {
      if (key === "tasks") {
        for (const row of value) {
          const known = ui.tasks.get(row.id);
          if (known) {
            Object.assign(known, row);
          } else {  // a task spawned while the run goes on
            ui.tasks.set(row.id, row);
            ui.order.push(row.id);
          }
        }
        ui.view.tasksVersion = (ui.view.tasksVersion || 0) + 1;
      } else if (key !== "type" && key !== "now") {
        ui.view[key] = value;
      }
    }
    if (message.type === "snapshot") ui.view.tasksVersion = 1;
    if (ui.view.run) ui.finished = ["completed", "failed", "cancelled"].includes(ui.view.run.status);
    schedule();
  }

  function schedule() {
    if (ui.scheduled) return;
    ui.scheduled = true;
    requestAnimationFrame(() => { ui.scheduled = false; draw(); });
  }

  // -- drawing ----------------------------------------------------------------------------

  function changed(name) {
    const value = ui.view[name];
    if (ui.drawn[name] === value) return false;
    ui.drawn[name] = value;
    return true;
  }

  function draw() {
    if (!ui.view || !ui.view.run) return;
    drawHeader();
    if (changed("phases")) drawPhases();
    if (changed("tasksVersion")) {
      drawTasks();
      drawGantt();
    }
    if (changed("agents")) drawAgents();
    if (changed("gates")) drawGates();
    if (changed("conflicts")) drawConflicts();
    const alerts = changed("alerts");
    if (changed("escalations") || alerts) drawAlerts();
  }

  // Once a second: the clock moves elapsed times, "... ago" texts and running bars.
  function tick() {
    if (!ui.view || !ui.view.run) return;
    drawHeader();
    document.querySelectorAll("[data-running]").forEach((node) => {
      node.textContent = duration(now() - Number(node.dataset.running));
    });
    document.querySelectorAll("[data-since]").forEach((node) => {
      node.textContent = node.dataset.prefix + ago(Number(node.dataset.since));
    });
    if ((ui.view.run.counts || {}).running > 0 && !ui.finished) drawGantt();
  }

  function drawHeader() {
    const run = ui.view.run;
    const counts = run.counts || {};
    document.title = `${run.plan} · counterpoint`;
    $("plan-name").textContent = run.plan;
    const status = $("run-status");
    status.textContent = run.status + (run.exit_code !== null && run.exit_code !== undefined
      ? ` (exit ${run.exit_code})` : "");
    status.className = `badge s-${run.status}`;
    const end = run.finished || now();
    $("stat-elapsed").textContent = duration(end - run.started);
    $("stat-done").textContent = `${counts.completed || 0} / ${run.total}`;
    $("stat-running").textContent = counts.running || 0;
    $("stat-failed").textContent = counts.failed || 0;
    $("stat-blocked").textContent = counts.blocked || 0;
    $("stat-gates").textContent = run.waiting_gates || 0;
    $("cancel-run").hidden = !ui.operator || ui.finished || run.status !== "running";
  }

  function progressBar(item, label) {
    const total = item.total || 0;
    const bar = el("div", {
      class: "bar",
      role: "progressbar",
      "aria-label": label,
      "aria-valuemin": 0,
      "aria-valuemax": total,
      "aria-valuenow": item.completed,
    });
    for (const state of ["completed", "running", "retrying", "failed", "blocked", "cancelled"]) {
      const n = (item.counts || {})[state] || 0;
      if (n && total) {
        bar.append(el("span", { class: `seg s-${state}`, style: { width: `${(100 * n) / total}%` } }));
      }
    }
    return bar;
  }

  function drawPhases() {
    const nodes = (ui.view.phases || []).map((phase) => el("div", { class: "phase" },
      el("div", { class: "phase-head" },
        el("strong", { text: phase.name }),
        el("span", { class: "muted", text: `${phase.completed} / ${phase.total}` })),
      progressBar(phase, `Phase ${phase.id}: ${phase.completed} of ${phase.total} tasks done`),
      el("ul", { class: "milestones" }, phase.milestones.map((m) => el("li", {},
        el("span", { class: "milestone-name", text: m.name, title: m.id }),
        progressBar(m, `Milestone ${m.id}: ${m.completed} of ${m.total} tasks done`),
        el("span", { class: "muted count", text: `${m.completed}/${m.total}` }))))));
    rebuild($("phases"), nodes.length ? nodes : [el("p", { class: "muted", text: "No phases." })]);
  }

  function drawTasks() {
    const select = $("state-filter");
    const counts = ui.view.run.counts || {};
    for (const state of STATES) {
      let option = select.querySelector(`option[value="${state}"]`);
      if (!option) {
        option = el("option", { value: state });
        select.append(option);
      }
      option.textContent = `${state} (${counts[state] || 0})`;
    }
    const words = $("task-filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const wanted = select.value;
    const rows = [];
    let matching = 0;
    for (const id of ui.order) {
      const t = ui.tasks.get(id);
      if (wanted && t.state !== wanted) continue;
      if (words.length) {
        const text = `${t.id} ${t.name} ${t.phase} ${t.milestone} ${t.agent || ""} ${t.state} ${t.note || ""}`
          .toLowerCase();
        if (!words.every((w) => text.includes(w))) continue;
      }
      matching += 1;
      if (rows.length >= MAX_ROWS) continue;
      const progress = t.state === "running" && t.progress !== null && t.progress !== undefined
        ? ` ${Math.round(t.progress)}%` : "";
      rows.push(el("tr", { "data-task": t.id },
        el("th", { scope: "row", class: "task-id" }, el("span", { text: t.id, title: t.name })),
        el("td", { class: "muted where", text: `${t.phase} / ${t.milestone}` }),
        el("td", { class: "state" }, badge(t.state), progress),
        el("td", { text: t.agent || "–" }),
        el("td", { class: "num", text: t.attempts }),
        el("td", { class: "num", text: duration(elapsed(t)),
          "data-running": t.state === "running" && !t.ended ? t.started : undefined }),
        el("td", { class: "note", text: t.note || "", title: t.note || undefined })));
    }
    $("task-rows").replaceChildren(...rows);
    const shown = Math.min(matching, MAX_ROWS);
    $("task-count").textContent = matching > MAX_ROWS
      ? `showing ${shown} of ${matching} matching tasks (refine the filter)`
      : `${matching} of ${ui.order.length} tasks`;
  }

  function drawGantt() {
    const box = $("gantt");
    const started = ui.order.map((id) => ui.tasks.get(id)).filter((t) => t.started);
    if (!started.length) {
      rebuild(box, [el("p", { class: "muted", text: "No task has started yet." })]);
      return;
    }
    started.sort((a, b) => a.started - b.started);
    const bars = started.slice(-MAX_BARS);
    const t0 = Math.min(ui.view.run.started, bars[0].started);
    const t1 = Math.max(ui.view.run.finished || now(),
      ...bars.map((t) => t.ended || t.started)) || t0 + 1;
    const span = Math.max(t1 - t0, 1);
    const width = Math.max(box.clientWidth || 800, 480);
    const label = 150;
    const row = 16;
    const top = 20;
    const scale = (width - label - 10) / span;
    const height = top + bars.length * row + 4;
    const chart = svg("svg", {
      width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `Timeline of the ${bars.length} latest tasks started`,
    });
    for (const tick of ticks(span)) {
      const x = label + tick * scale;
      chart.append(svg("line", { x1: x, x2: x, y1: top - 4, y2: height, class: "tick" }));
      if (x < width - 30) chart.append(svg("text", { x: x + 2, y: 12, class: "axis" }, duration(tick)));
    }
    bars.forEach((t, i) => {
      const y = top + i * row;
      const end = t.ended || (t.state === "running" ? now() : t.started);
      const x = label + (t.started - t0) * scale;
      const w = Math.max((end - t.started) * scale, 2);
      chart.append(svg("text", { x: 4, y: y + 11, class: "label" }, clip(t.id, 22)));
      const bar = svg("rect", { x, y: y + 2, width: w, height: row - 4, rx: 2,
        class: `gbar s-${t.state}`, "data-task": t.id });
      bar.append(svg("title", {},
        `${t.id} · ${t.state} · ${t.agent || "no agent"} · ${duration(end - t.started)}`));
      chart.append(bar);
    });
    const note = started.length > MAX_BARS
      ? el("p", { class: "muted", text: `the latest ${MAX_BARS} of ${started.length} tasks started` })
      : null;
    rebuild(box, note ? [chart, note] : [chart]);
  }

  function ticks(span) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400,
      21600, 43200, 86400, 172800, 604800];
    const step = steps.find((s) => span / s <= 8) || span / 8;
    const out = [];
    for (let t = 0; t <= span; t += step) out.push(t);
    return out;
  }

  function clip(text, n) {
    return text.length > n ? `${text.slice(0, n - 1)}…` : text;
  }

  function drawAgents() {
    const rows = (ui.view.agents || []).map((a) => {
      let heartbeat;
      if (!a.remote) heartbeat = el("td", { class: "muted", text: "alive (local)" });
      else if (!a.last_seen) heartbeat = el("td", { class: "muted", text: "never connected" });
      else heartbeat = since("td", a.connected ? "" : "disconnected · ", a.last_seen, { class: "muted" });
      let action = null;
      if (ui.operator && !ui.finished) {
        const resting = a.state === "maintenance";
        action = el("button", {
          type: "button", class: "small", "data-key": `agent:${a.name}`,
          "aria-label": resting ? `Make ${a.name} available` : `Put ${a.name} in maintenance`,
          text: resting ? "Make available" : "Maintenance",
          onclick: () => act(`api/agents/${encodeURIComponent(a.name)}/state`,
            { state: resting ? "available" : "maintenance" },
            (r) => `${r.agent} is now ${r.state}`),
        });
      }
      return el("tr", { "data-agent": a.name },
        el("th", { scope: "row", title: (a.capabilities || []).join(", ") || "no capabilities" },
          a.name, a.remote ? el("span", { class: "muted", text: " remote" }) : null),
        el("td", {}, badge(a.state)),
        el("td", { class: "num", text: `${a.running}/${a.capacity}` }),
        heartbeat,
        el("td", {}, action));
    });
    rebuild($("agent-rows"), rows);
  }

  function drawGates() {
    const gates = ui.view.gates || [];
    const nodes = gates.map((g) => {
      const conditions = el("ul", { class: "conditions" }, g.conditions.map((c) => {
        const mark = c.passed === true ? "✓" : c.passed === false ? "✗" : "…";
        const kind = c.passed === true ? "ok" : c.passed === false ? "bad" : "wait";
        return el("li", {},
          el("span", { class: `mark m-${kind}`, text: mark, "aria-hidden": "true" }),
          el("span", { class: "visually-hidden",
            text: c.passed === true ? "passed: " : c.passed === false ? "failed: " : "pending: " }),
          `${c.kind} ${c.name}: `, el("span", { class: "muted", text: c.message }));
      }));
      return el("article", { class: "card gate", "data-gate": g.gate, "aria-label": `Gate ${g.gate}` },
        el("div", { class: "card-head" },
          el("strong", { text: g.gate }), el("span", { class: "muted", text: g.kind }),
          badge(g.status)),
        conditions,
        g.approvers.length
          ? el("p", { class: "muted", text: `approvers: ${g.approvers.join(", ")}` }) : null,
        gateControls(g));
    });
    rebuild($("gates"), nodes.length ? nodes : [el("p", { class: "muted", text: "The plan has no gates." })]);
  }

  function gateControls(g) {
    if (!ui.operator || ui.finished || !g.approvers.length || PASSED.has(g.status)) return null;
    if (!g.approvers.includes(ui.operator)) {
      return el("p", { class: "muted", text: `only ${g.approvers.join(", ")} can decide this gate` });
    }
    const id = `comment-${g.gate}`;
    const comment = el("input", { id, type: "text", "data-key": id, maxlength: 2000,
      placeholder: "comment (optional)" });
    const decide = (approve) => act(
      `api/gates/${encodeURIComponent(g.gate)}/${approve ? "approve" : "reject"}`,
      comment.value ? { comment: comment.value } : {},
      (r) => `${r.gate} ${r.decision} by ${r.by}`);
    return el("div", { class: "controls" },
      el("label", { for: id, class: "visually-hidden", text: `Comment on ${g.gate}` }),
      comment,
      el("button", { type: "button", class: "primary", "data-key": `approve-${g.gate}`,
        "aria-label": `Approve ${g.gate}`, text: "Approve", onclick: () => decide(true) }),
      el("button", { type: "button", class: "danger", "data-key": `reject-${g.gate}`,
        "aria-label": `Reject ${g.gate}`, text: "Reject", onclick: () => decide(false) }));
  }

  function drawConflicts() {
    const nodes = (ui.view.conflicts || []).map((c) => {
      const values = el("ul", { class: "values" }, c.tasks.map((task) => el("li", {},
        el("span", { class: "task-id", text: task }), ": ",
        el("code", { text: JSON.stringify((c.values || {})[task]) }),
        ui.operator && !ui.finished ? el("button", {
          type: "button", class: "small", "data-key": `keep-${c.id}-${task}`,
          "aria-label": `Keep ${task}'s value for conflict ${c.id}`, text: "Keep",
          onclick: () => resolve(c, { task }),
        }) : null)));
      return el("article", { class: "card conflict", "data-conflict": c.id,
        "aria-label": `Conflict ${c.id} on ${c.key}` },
        el("div", { class: "card-head" },
          el("strong", { text: `#${c.id} ${c.key}` }), el("span", { class: "muted", text: c.kind }),
          badge(c.policy, "policy")),
        since("p", "detected ", c.detected, { class: "muted" }),
        values,
        ui.operator && !ui.finished ? valueForm(c) : null);
    });
    rebuild($("conflicts"), nodes.length ? nodes : [el("p", { class: "muted", text: "No open conflicts." })]);
  }

  function valueForm(c) {
    const id = `value-${c.id}`;
    const input = el("input", { id, type: "text", "data-key": id, placeholder: '"10.0.0.0/16"',
      spellcheck: "false" });
    return el("div", { class: "controls" },
      el("label", { for: id, text: "or a value (JSON)" }),
      input,
      el("button", { type: "button", class: "small", "data-key": `use-${c.id}`,
        "aria-label": `Use this value for conflict ${c.id}`, text: "Use value",
        onclick: () => {
          let value;
          try { value = JSON.parse(input.value); } catch (e) {
            notify(`not valid JSON: ${e.message} (a string needs quotes: "text")`, "error");
            return;
          }
          resolve(c, { value });
        } }));
  }

  function resolve(conflict, body) {
    act(`api/conflicts/${conflict.id}/resolve`, body,
      (r) => `conflict ${r.id} on ${r.key} resolved`);
  }

  function drawAlerts() {
    const alerts = (ui.view.alerts || []).map((a) => el("li", { class: `alert a-${a.severity}` },
      badge(a.severity), " ", el("strong", { text: a.name }),
      a.subject ? el("span", { class: "muted", text: ` ${a.subject}` }) : null,
      el("div", { text: a.message }),
      since("div", "since ", a.since, { class: "muted" })));
    const cases = (ui.view.escalations || []).map((c) => el("li", { class: "alert a-warning" },
      badge("escalation", "warning"), " ", el("strong", { text: c.subject }),
      el("span", { class: "muted", text: ` at ${c.level}` }),
      el("div", { text: c.summary }),
      since("div", "opened ", c.opened, { class: "muted" })));
    const items = [...alerts, ...cases];
    rebuild($("alerts"), items.length ? [el("ul", { class: "alerts" }, items)]
      : [el("p", { class: "muted", text: "No alerts firing." })]);
  }

  // -- operators ------------------------------------------------------------------------------

  function notify(text, kind) {
    const box = $("notice");
    box.textContent = text;
    box.className = `notice n-${kind || "info"}`;
    box.hidden = false;
    clearTimeout(notify.timer);
    notify.timer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 10000 : 4000);
  }

  // POST path with a JSON body (the session cookie goes with it): [status, answer] or null
  async function post(path, body) {
    try {
      const answer = await fetch(path, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      return [answer.status, await answer.json().catch(() => ({}))];
    } catch (e) {
      notify(`the server did not answer: ${e.message}`, "error");
      return null;
    }
  }

  async function act(path, body, describe) {
    const answer = await post(path, body);
    if (!answer) return null;
    const [status, data] = answer;
    if (status < 200 || status >= 300) {
      notify(data.error || `refused: HTTP ${status}`, "error");
      if (status === 401) setUser(null);
      return null;
    }
    notify(describe(data), "ok");
    return data;
  }

  async function signIn(token) {
    const answer = await post("login", { token });
    if (!answer) return;
    const [status, data] = answer;
    if (status !== 200) {
      notify(data.error || `refused: HTTP ${status}`, "error");
      setUser(null);
      return;
    }
    setUser(data);
  }

  async function signOut() {
    await post("logout", {});
    setUser(null);
  }

  // who the session cookie belongs to, or null (signed out or never signed in)
  async function whoAmI() {
    try {
      const answer = await fetch("api/whoami", { credentials: "same-origin" });
      return answer.ok ? await answer.json() : null;
    } catch {
      return undefined;  // the server is away: not a sign-out
    }
  }

  async function stillSignedIn() {
    if ((await whoAmI()) !== null) return true;
    setUser(null);
    notify("the session has ended: sign in again", "error");
    return false;
  }

  function setUser(user) {
    const before = ui.user;
    ui.user = user && user.name ? { name: user.name, role: user.role } : null;
    ui.operator = ui.user && ui.user.role === "operator" ? ui.user.name : null;
    const who = $("who");
    who.textContent = ui.user ? `${ui.user.role} ${ui.user.name}` : "signed out";
    who.className = ui.user ? `who ${ui.user.role}` : "who";
    $("token-form").hidden = Boolean(ui.user);
    $("sign-out").hidden = !ui.user;
    document.body.classList.toggle("signed-out", !ui.user);
    if (!ui.user) {
      const socket = ui.socket;
      ui.socket = null;
      if (socket) socket.close();
      ui.view = null;
      ui.finished = false;
      $("cancel-run").hidden = true;
      setConnection("sign in to follow the run", "down");
      for (const id of ["phases", "gantt", "task-rows", "alerts", "gates", "conflicts",
        "agent-rows"]) rebuild($(id), []);
    } else if (!before && !ui.socket) {
      connect();
    }
    ui.drawn = {};
    draw();
  }

  function setUp() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("token-input");
      const token = input.value.trim();
      input.value = "";
      if (token) signIn(token);
    });
    $("sign-out").addEventListener("click", signOut);
    $("cancel-run").addEventListener("click", () => $("confirm-cancel").showModal());
    $("confirm-cancel").addEventListener("close", () => {
      if ($("confirm-cancel").returnValue === "cancel") {
        act("api/cancel", {}, (r) => `cancelling the run (by ${r.by})`);
      }
    });
    const redrawTasks = () => { drawTasks(); };
    $("task-filter").addEventListener("input", redrawTasks);
    $("state-filter").addEventListener("change", redrawTasks);
    window.addEventListener("resize", () => { if (ui.view) drawGantt(); });
    setInterval(tick, 1000);

    // a token in the address (#token=...) never reaches the server; take it off the
    // address (and the history) at once, then trade it for a session cookie
    const match = location.hash.match(/^#token=(.+)$/);
    if (match) {
      history.replaceState(null, "", location.pathname + location.search);
      signIn(decodeURIComponent(match[1]));
    } else {
      whoAmI().then((user) => setUser(user || null));
    }
  }

  setUp();
})();
