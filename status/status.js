// The reverse_http status page: polls its own JSON (?format=json) once a
// second and draws every pool. Everything a worker sent (its name) goes
// into the page as text, never as markup.
"use strict";

const POLL_MS = 1000;

function el(tag, attrs, ...children) {
	const e = document.createElement(tag);
	for (const [k, v] of Object.entries(attrs || {})) {
		if (k === "class") e.className = v;
		else e.setAttribute(k, v);
	}
	for (const c of children) {
		if (c !== null && c !== undefined) e.append(c);
	}
	return e;
}

function fmtDur(s) {
	if (!s) return "0";
	if (s < 1) return Math.round(s * 1000) + " ms";
	if (s < 60) return s.toFixed(1) + " s";
	return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}

function fmtAge(iso, now) {
	if (!iso) return "";
	const s = Math.max(0, (now - Date.parse(iso)) / 1000);
	if (s < 60) return Math.round(s) + " s";
	if (s < 3600) return Math.round(s / 60) + " min";
	return Math.round(s / 3600) + " h";
}

function sum(obj, keys) {
	return keys.reduce((n, k) => n + (obj[k] || 0), 0);
}

function stat(name, value, hint) {
	return el("div", { class: "stat", "data-stat": name }, el("b", {}, String(value)), el("span", {}, hint));
}

const SVG = "http://www.w3.org/2000/svg";

// chart draws series (arrays of numbers) over the pool's history.
function chart(title, now, series, classes, label) {
	const w = 300, h = 56;
	const svg = document.createElementNS(SVG, "svg");
	svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
	svg.setAttribute("preserveAspectRatio", "none");
	const top = Math.max(1e-9, ...series.flat());
	series.forEach((values, i) => {
		if (values.length < 2) return;
		const d = values.map((v, j) => {
			const x = (j / (values.length - 1)) * w;
			const y = h - 2 - (v / top) * (h - 4);
			return (j ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
		}).join(" ");
		const path = document.createElementNS(SVG, "path");
		path.setAttribute("d", d);
		path.setAttribute("class", classes[i]);
		svg.append(path);
	});
	return el("div", { class: "chart" },
		el("div", { class: "title" }, el("span", {}, title), el("span", {}, label)),
		svg);
}

function slots(w) {
	const box = el("div", { class: "slots", title: `${w.busy} busy, ${w.idle} idle` });
	if (w.busy + w.idle > 48) {
		box.append(`${w.busy} busy / ${w.busy + w.idle}`);
		return box;
	}
	for (let i = 0; i < w.busy; i++) box.append(el("span", { class: "slot busy" }));
	for (let i = 0; i < w.idle; i++) box.append(el("span", { class: "slot idle" }));
	return box;
}

function workersTable(p, now) {
	if (!p.workers.length) {
		return el("p", { class: "muted no-workers" }, "No worker has connected.");
	}
	const head = el("tr", {},
		el("th", {}, "Worker"), el("th", {}, "Remote"), el("th", {}, "Slots"),
		el("th", { class: "num" }, "Jobs"), el("th", { class: "num" }, "Failures"), el("th", {}, "Since"));
	const rows = p.workers.map((w) => el("tr", {
		class: w.connections ? "worker" : "worker gone",
		"data-worker": w.id, "data-busy": String(w.busy), "data-idle": String(w.idle),
	},
	el("td", { class: "name" }, w.name || "(unnamed)", w.drained ? el("span", { class: "badge" }, "drained") : null),
	el("td", {}, w.remote),
	el("td", {}, slots(w)),
	el("td", { class: "num jobs" }, String(w.jobs)),
	el("td", { class: "num failures" }, String(w.failures)),
	el("td", { class: "muted" }, w.connections ? fmtAge(w.connected_since, now) : "gone " + fmtAge(w.disconnected_at, now))));
	return el("div", { class: "scroll" }, el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function counts(kind, obj, bad) {
	const box = el("div", { class: "counts" });
	for (const [k, v] of Object.entries(obj)) {
		const cls = v === 0 ? "zero" : (bad.includes(k) ? "bad" : "");
		box.append(el("span", { class: cls, ["data-" + kind]: k }, k.replace(/_/g, " ") + " ", el("b", {}, String(v))));
	}
	return box;
}

function poolCard(p, now) {
	const slotsTotal = p.busy + p.idle;
	const refused = sum(p.requests, ["queue_full", "queue_timeout", "pool_closed", "refused_estimate"]);
	const failed = sum(p.requests, ["worker_failed", "response_timeout"]);
	const rejected = Object.entries(p.handshakes).filter(([k]) => k !== "ok");
	const h = p.history || [];
	const depth = h.map((s) => s.queue_depth);
	const waitMean = h.map((s) => s.wait_mean_seconds);
	const waitMax = h.map((s) => s.wait_max_seconds);
	const secs = h.length > 1 ? Math.round((h[h.length - 1].t - h[0].t) / 1000) : 0;
	const span = !secs ? "collecting…" : secs < 90 ? `last ${secs} s` : `last ${Math.round(secs / 60)} min`;
	return el("section", { class: "pool", "data-pool": p.name },
		el("header", {}, el("h2", {}, p.name),
			el("span", { class: "muted" }, `${p.protocol || ""} on ${p.listen.join(", ")}`)),
		el("div", { class: "stats" },
			stat("queue", p.queue_depth, `waiting (max ${p.limits.max_queue})`),
			stat("oldest", fmtDur(p.oldest_wait_seconds), "oldest wait"),
			stat("slots", `${p.busy}/${slotsTotal}`, "slots busy"),
			stat("served", p.requests.ok || 0, "answered"),
			stat("refused", refused, "refused (503)"),
			stat("failed", failed, "failed (502/504)")),
		el("div", { class: "charts" },
			chart("Queue depth, " + span, now, [depth], ["line"], "max " + Math.max(0, ...depth)),
			chart("Queue wait (mean, max), " + span, now, [waitMean, waitMax], ["line", "max"],
				"max " + fmtDur(Math.max(0, ...waitMax)))),
		el("h3", {}, "Workers"),
		workersTable(p, now),
		el("h3", {}, "Requests by outcome"),
		counts("outcome", p.requests, ["worker_failed", "response_timeout", "queue_full", "queue_timeout", "pool_closed", "refused_estimate"]),
		el("h3", {}, "Handshakes"),
		counts("result", Object.fromEntries([["ok", p.handshakes.ok || 0], ...rejected]), rejected.map(([k]) => k)));
}

async function poll() {
	const updated = document.getElementById("updated");
	try {
		const resp = await fetch("?format=json", { cache: "no-store", headers: { Accept: "application/json" } });
		if (!resp.ok) throw new Error("HTTP " + resp.status);
		const data = await resp.json();
		document.getElementById("pools").replaceChildren(...data.pools.map((p) => poolCard(p, data.time)));
		updated.textContent = "updated " + new Date(data.time).toLocaleTimeString();
		updated.className = "muted";
	} catch (err) {
		updated.textContent = "not updating: " + err.message;
		updated.className = "stale";
	}
	setTimeout(poll, POLL_MS);
}

poll();
