// Live dashboard: one EventSource, every number redrawn from each snapshot. No framework, no CDN.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const fmtMs = (v) => (v === null || v === undefined ? "–" : v < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(2) + " s");
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const short = (s, n) => (s && s.length > n ? s.slice(0, n) + "…" : s || "");

  function bars(svg, values, labels) {
    if (!svg) return;
    const max = Math.max(1, ...values);
    const w = 600 / Math.max(1, values.length);
    svg.innerHTML = values
      .map((v, i) => {
        const h = (v / max) * 100;
        const label = labels ? '<text x="' + (i * w + 2) + '" y="118">' + esc(labels[i]) + "</text>" : "";
        return '<rect x="' + (i * w + 1) + '" y="' + (105 - h) + '" width="' + Math.max(1, w - 2) + '" height="' + h + '"><title>' + v + "</title></rect>" + label;
      })
      .join("");
  }

  function render(s) {
    $("online_nodes").textContent = s.online_nodes;
    $("jobs_per_min").textContent = s.jobs_per_min;
    $("success_rate").textContent = s.success_rate === null ? "–" : (s.success_rate * 100).toFixed(1) + "%";
    $("latency_p50").textContent = fmtMs(s.latency_ms.p50);
    $("latency_p95").textContent = fmtMs(s.latency_ms.p95);
    $("sats_settled").textContent = s.windows.last_day.sats_settled;
    $("sats_requested").textContent = s.windows.last_day.sats_requested;
    $("completed_day").textContent = s.windows.last_day.completed;
    const failures = Object.entries(s.failures).sort((a, b) => b[1] - a[1]);
    $("failures").innerHTML = failures.length ? failures.map(([c, n]) => esc(c) + " " + n).join("<br>") : "none";
    if (s.personal && $("earned")) {
      $("earned").textContent = Math.floor(s.personal.earned_msat / 1000);
      $("spent").textContent = Math.floor(s.personal.spent_msat / 1000);
    }
    bars($("jobs_chart"), s.jobs_per_min_series);
    bars(
      $("latency_chart"),
      s.latency_histogram.map((b) => b.count),
      s.latency_histogram.map((b) => (b.le_ms > 1e12 ? ">10s" : "≤" + (b.le_ms >= 1000 ? b.le_ms / 1000 + "s" : b.le_ms + "ms")))
    );
    $("providers").innerHTML = s.top_providers
      .map((p) => {
        const fails = Object.entries(p.failed).map(([c, n]) => esc(c) + " " + n).join(" ");
        return "<tr><td><a href=\"/provider/" + esc(p.npub) + "\">" + esc(p.name) + " <code>" + esc(short(p.npub, 18)) + "</code></a></td><td>" +
          (p.online ? "●" : "○") + "</td><td>" + p.completed + "</td><td>" + fails + "</td><td>" + fmtMs(p.median_runtime_ms) + "</td><td>" +
          p.earnings_sats + "</td><td>" + (p.queue_depth === null ? "" : p.queue_depth) + "</td></tr>";
      })
      .join("");
    $("recent_jobs").innerHTML = s.recent_jobs
      .map((j) => "<tr><td><a href=\"/job/" + esc(j.job_id) + "\"><code>" + esc(short(j.job_id, 12)) + "</code></a></td><td>" + (j.kind || "") +
        "</td><td>" + esc(j.status) + (j.failure ? " (" + esc(j.failure) + ")" : "") + "</td><td>" + (j.latency_ms === null ? "" : j.latency_ms + " ms") +
        "</td><td>" + (j.amount_msat === null ? "" : j.amount_msat) + "</td></tr>")
      .join("");
    document.body.dataset.generatedAt = s.generated_at;
  }

  const source = new EventSource("/api/stream");
  source.addEventListener("stats", (e) => {
    $("live").classList.add("on");
    render(JSON.parse(e.data));
  });
  source.onerror = () => $("live").classList.remove("on");
})();
