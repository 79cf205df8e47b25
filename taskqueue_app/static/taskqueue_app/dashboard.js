/* Keeps the queue dashboard live: polls its JSON twin every second, redraws the numbers and the
 * runs-per-second chart. No dependencies. When a poll fails the status line says so, and the next
 * success clears it. */
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
    const QUEUE_COLUMNS = root.querySelectorAll("#tq-queues thead th").length;

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

    function keyCell(parts) {
        // As the template: a narrow column may break the key after its dots only.
        const cell = el("th", {scope: "row", class: "tq-key"});
        parts.forEach(function (part, index) {
            cell.append(index ? "." : "", index ? el("wbr") : "", part);
        });
        return cell;
    }

    function queueRow(row) {
        const bounds = row.configured
            ? el("strong", {text: "configured"})
            : el("span", {class: "tq-quiet", text: "default"});
        const number = (cls, value) => el("td", {class: cls, text: String(value)});
        const workers = el("td", {class: "tq-workers"}, [
            el("span", {class: "tq-number", text: String(row.workers)}),
        ]);
        const attrs = {"data-key": row.task_key};
        if (row.unserved) {
            // Runs wait and nobody serves the key: the same mark as the server-rendered page.
            attrs.class = "tq-unserved";
            workers.append(" ", el("span", {
                class: "tq-flag",
                title: "Runs are waiting and no worker serves this key",
                text: "no worker",
            }));
        }
        return el("tr", attrs, [
            keyCell(row.key_parts),
            el("td", {class: "tq-scheduled"}, [
                lane("scheduled", row.scheduled_size, row.scheduled_limit, row.scheduled_pct),
            ]),
            el("td", {class: "tq-retry"}, [
                lane("retry", row.retry_size, row.retry_limit, row.retry_pct),
            ]),
            el("td", {class: "tq-fill", text: row.fill_pct + "%"}),
            number("tq-deferred", row.deferred),
            number("tq-backlog", row.backlog),
            number("tq-waiting", row.waiting),
            number("tq-running", row.running),
            workers,
            el("td", {class: "tq-bounds"}, [bounds]),
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
        document.getElementById("tq-unserved").classList.toggle("tq-alert", data.totals.unserved > 0);
        document.getElementById("tq-count").textContent = String(data.page.count);
        document.getElementById("tq-page-number").textContent = String(data.page.number);
        document.getElementById("tq-page-count").textContent = String(data.page.num_pages);

        const queues = root.querySelector("#tq-queues tbody");
        if (data.queues.length) {
            queues.replaceChildren(...data.queues.map(queueRow));
        } else if (!queues.querySelector(".tq-empty")) {
            queues.replaceChildren(emptyRow(QUEUE_COLUMNS, "No task keys to show."));
        }
        const workers = root.querySelector("#tq-workers tbody");
        workers.replaceChildren(
            ...(data.workers.length ? data.workers.map(workerRow)
                : [emptyRow(6, "No worker is connected.")])
        );
    }

    /* The throughput chart: runs enqueued and finished per second, from the difference of the
     * counters of two polls over their time apart, for the last `data-window` seconds. What it
     * draws is also on the <svg> as data attributes (points, last and peak rates). */
    const chart = (function () {
        const svg = document.getElementById("tq-chart");
        const span = Number(svg.dataset.window) || 180;
        const box = svg.viewBox.baseVal;
        const scaleLabel = document.getElementById("tq-chart-scale");
        const samples = [];
        let last = null;
        const initial = document.getElementById("tq-counters");
        if (initial) {
            last = JSON.parse(initial.textContent);
        }

        function niceCeiling(value) {
            // 1, 2, 5, 10, 20, 50...: a scale an operator reads at a glance.
            const power = Math.pow(10, Math.floor(Math.log10(value)));
            for (const step of [1, 2, 5, 10]) {
                if (value <= step * power) {
                    return step * power;
                }
            }
            return 10 * power;
        }

        function rate(value) {
            return value >= 10 ? value.toFixed(0) : value.toFixed(1);
        }

        function draw(now) {
            const peak = (name) => samples.reduce((top, s) => Math.max(top, s[name]), 0);
            const peaks = {enqueued: peak("enqueued"), finished: peak("finished")};
            const scale = niceCeiling(Math.max(1, peaks.enqueued, peaks.finished));
            for (const name of ["enqueued", "finished"]) {
                const points = samples.map(function (s) {
                    const x = box.width * (1 - (now - s.time) / span);
                    const y = box.height * (1 - s[name] / scale);
                    return x.toFixed(1) + "," + y.toFixed(1);
                });
                svg.querySelector(".tq-line-" + name).setAttribute("points", points.join(" "));
                if (name === "enqueued" && points.length) {
                    // Shaded below its line: where both rates are equal, the finished line on
                    // top would otherwise hide the enqueued one.
                    const first = points[0].split(",")[0];
                    const end = points[points.length - 1].split(",")[0];
                    const area = [first + "," + box.height, ...points, end + "," + box.height];
                    svg.querySelector(".tq-area-enqueued").setAttribute("points", area.join(" "));
                }
                const latest = samples.length ? samples[samples.length - 1][name] : 0;
                svg.dataset["last" + name[0].toUpperCase() + name.slice(1)] = latest.toFixed(2);
                svg.dataset["peak" + name[0].toUpperCase() + name.slice(1)] =
                    peaks[name].toFixed(2);
                document.getElementById("tq-rate-" + name).textContent =
                    samples.length ? rate(latest) : "\u2013";
            }
            svg.dataset.points = String(samples.length);
            svg.dataset.scale = String(scale);
            scaleLabel.textContent = scale + "/s";
        }

        function record(counters) {
            if (!counters) {
                return;
            }
            const elapsed = last ? counters.time - last.time : 0;
            // Another process (or a restarted one) counts from elsewhere: a new baseline only.
            if (last && last.process === counters.process && elapsed > 0) {
                const enqueued = (counters.enqueued - last.enqueued) / elapsed;
                const finished = (counters.finished - last.finished) / elapsed;
                if (enqueued >= 0 && finished >= 0) {
                    samples.push({time: counters.time, enqueued: enqueued, finished: finished});
                }
            }
            last = counters;
            while (samples.length && samples[0].time < counters.time - span) {
                samples.shift();
            }
            draw(counters.time);
        }

        return {record: record};
    })();

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
            const data = await response.json();
            render(data);
            chart.record(data.counters);
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
