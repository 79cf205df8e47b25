/* Keeps the queue dashboard live: polls its JSON twin every second and redraws the numbers.
 * No dependencies. When a poll fails the status line says so, and the next success clears it. */
(function () {
    "use strict";

    const root = document.querySelector(".tq-dashboard");
    if (!root) {
        return;
    }
    const dataUrl = root.dataset.url;
    const interval = Number(root.dataset.interval) || 1000;
    const status = document.getElementById("tq-status");
    const statusText = status.querySelector(".tq-status-text");
    const KEYS_SHOWN = 5;

    function el(tag, attrs, children) {
        const node = document.createElement(tag);
        for (const [name, value] of Object.entries(attrs || {})) {
            if (name === "text") {
                node.textContent = value;
            } else {
                node.setAttribute(name, value);
            }
        }
        for (const child of children || []) {
            node.append(child);
        }
        return node;
    }

    function setStatus(state, text) {
        status.dataset.state = state;
        statusText.textContent = text;
    }

    function pad(n) {
        return String(n).padStart(2, "0");
    }

    function formatTime(iso) {
        const moment = new Date(iso);
        if (Number.isNaN(moment.getTime())) {
            return iso;
        }
        const seconds = Math.max(0, Math.round((Date.now() - moment.getTime()) / 1000));
        let ago;
        if (seconds < 60) {
            ago = seconds + " s ago";
        } else if (seconds < 3600) {
            ago = Math.floor(seconds / 60) + " min ago";
        } else {
            ago = Math.floor(seconds / 3600) + " h ago";
        }
        const clock = pad(moment.getHours()) + ":" + pad(moment.getMinutes()) + ":" +
            pad(moment.getSeconds());
        return clock + " (" + ago + ")";
    }

    function lane(name, size, limit, pct) {
        const bar = el("div", {
            class: "tq-bar" + (pct >= 100 ? " tq-full" : pct >= 80 ? " tq-high" : ""),
            role: "img",
            title: name + ": " + size + " of " + limit + " (" + pct + "%)",
            "aria-label": name + ": " + size + " of " + limit,
        }, [el("span")]);
        bar.firstChild.style.width = pct + "%";
        return el("div", {class: "tq-lane"}, [
            el("span", {class: "tq-count", text: size + " / " + limit}),
            bar,
        ]);
    }

    function queueRow(row) {
        const bounds = row.configured
            ? el("strong", {text: "configured"})
            : el("span", {class: "tq-quiet", text: "default"});
        return el("tr", {"data-key": row.task_key}, [
            el("th", {scope: "row", class: "tq-key", text: row.task_key}),
            el("td", {class: "tq-scheduled"}, [
                lane("scheduled", row.scheduled_size, row.scheduled_limit, row.scheduled_pct),
            ]),
            el("td", {class: "tq-retry"}, [
                lane("retry", row.retry_size, row.retry_limit, row.retry_pct),
            ]),
            el("td", {class: "tq-fill", text: row.fill_pct + "%"}),
            el("td", {class: "tq-bounds"}, [bounds]),
            el("td", {class: "tq-workers", text: String(row.workers)}),
            el("td", {class: "tq-held", text: String(row.held)}),
        ]);
    }

    function workerRow(worker) {
        const keys = el("td", {class: "tq-keys", title: worker.task_keys.join(", ")}, [
            worker.task_keys.slice(0, KEYS_SHOWN).join(", "),
        ]);
        if (worker.task_keys.length > KEYS_SHOWN) {
            keys.append(" ", el("span", {
                class: "tq-quiet",
                text: "and " + (worker.task_keys.length - KEYS_SHOWN) + " more",
            }));
        }
        const time = (cls, iso) => el("td", {class: cls}, [
            el("time", {datetime: iso, text: formatTime(iso)}),
        ]);
        return el("tr", {"data-worker": worker.identifier}, [
            el("th", {scope: "row", class: "tq-client", text: worker.identifier}),
            keys,
            el("td", {class: "tq-connections", text: String(worker.connections)}),
            el("td", {class: "tq-held", title: worker.held.join(", "), text: String(worker.held_count)}),
            time("tq-since", worker.connected_since),
            time("tq-active", worker.last_activity),
        ]);
    }

    function emptyRow(columns, text) {
        return el("tr", {class: "tq-empty"}, [el("td", {colspan: String(columns), text: text})]);
    }

    function render(data) {
        for (const node of root.querySelectorAll("[data-total]")) {
            node.textContent = String(data.totals[node.dataset.total]);
        }
        for (const node of root.querySelectorAll("[data-plural]")) {
            const count = data.totals[node.dataset.plural];
            node.textContent = count === 1 ? node.dataset.one : node.dataset.many;
        }
        document.getElementById("tq-count").textContent = String(data.page.count);
        document.getElementById("tq-page-number").textContent = String(data.page.number);
        document.getElementById("tq-page-count").textContent = String(data.page.num_pages);

        const queues = root.querySelector("#tq-queues tbody");
        if (data.queues.length) {
            queues.replaceChildren(...data.queues.map(queueRow));
        } else if (!queues.querySelector(".tq-empty")) {
            queues.replaceChildren(emptyRow(7, "No task keys to show."));
        }
        const workers = root.querySelector("#tq-workers tbody");
        workers.replaceChildren(
            ...(data.workers.length ? data.workers.map(workerRow)
                : [emptyRow(6, "No worker is connected.")])
        );
    }

    let failures = 0;

    async function poll() {
        if (document.hidden) {
            // Nobody is looking: skip this round; the next visible one catches up.
            return;
        }
        try {
            const response = await fetch(dataUrl, {
                credentials: "same-origin",
                cache: "no-store",
                headers: {Accept: "application/json"},
            });
            const type = response.headers.get("Content-Type") || "";
            if (response.redirected || response.status === 403 || !type.includes("json")) {
                // The admin sends signed-out users to its login page.
                setStatus("lost", "Signed out or no longer allowed to view the dashboard: " +
                    "reload the page to sign in again.");
                return;
            }
            if (!response.ok) {
                throw new Error("HTTP " + response.status);
            }
            render(await response.json());
            failures = 0;
            setStatus("live", "Live: updated " + formatTime(new Date().toISOString()).split(" ")[0] +
                ", refreshing every " + interval / 1000 + " s.");
        } catch (error) {
            failures += 1;
            setStatus("lost", "Connection to the server lost (" + error.message + "): " +
                "showing the last numbers received; retrying every " + interval / 1000 + " s" +
                (failures > 1 ? " (" + failures + " attempts failed)." : "."));
        }
    }

    async function loop() {
        await poll();
        window.setTimeout(loop, interval);
    }

    document.addEventListener("visibilitychange", function () {
        if (!document.hidden) {
            poll();
        }
    });
    for (const node of root.querySelectorAll("time[datetime]")) {
        node.textContent = formatTime(node.getAttribute("datetime"));
    }
    loop();
})();
