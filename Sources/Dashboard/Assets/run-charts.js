// A run's charts, drawn from its events.jsonl (one parsed object per event, in order): the dashboard's job page feeds
// them live from the daemon's event stream, `trainerd report` all at once. Uses dygraphs (Debian's libjs-dygraphs).
//
//   loss         training loss per step, test loss at each evaluation
//   accuracy     test accuracy at each evaluation
//   lr           the learning rate per step
//   gradnorm     the global gradient norm before clipping (log scale), clipped steps marked
//   throughput   samples/s
//   workers      workers per step; joins (J), leaves (L), moves to another job (M), losses (X), stragglers (S)
//   heat map     each parameter tensor's gradient norm (a row, in forward order) over steps (columns), log colour
//   events       every event but the steps, newest first
//
// Each chart's element carries data-points (its points so far) and the heat map data-rows, for tests and scripts.
"use strict";

(function (global) {
  // The marks `trainerd monitor` uses: a tensor's gradient norm below this vanishes, above that explodes.
  const VANISHING = 1e-6, EXPLODING = 1e2;
  const EVENTS_SHOWN = 300;
  // Viridis, from low to high.
  const COLOURS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

  const CHARTS = [
    { id: "loss", title: "Loss", labels: ["step", "training", "test"], options: { connectSeparatedPoints: true,
      series: { test: { drawPoints: true, pointSize: 3, strokeWidth: 1.5 } } } },
    { id: "accuracy", title: "Test accuracy", labels: ["step", "accuracy"],
      options: { drawPoints: true, pointSize: 3, valueRange: [0, 1.001] } },
    { id: "lr", title: "Learning rate", labels: ["step", "learning rate"], options: {} },
    { id: "gradnorm", title: "Gradient norm before clipping", labels: ["step", "norm", "clipped"],
      options: { logscale: true, series: { clipped: { strokeWidth: 0, drawPoints: true, pointSize: 3, color: "#d62728" } } } },
    { id: "throughput", title: "Samples/s", labels: ["step", "samples/s"], options: { drawPoints: true, pointSize: 2 } },
    { id: "workers", title: "Workers", labels: ["step", "workers"], options: { stepPlot: true, fillGraph: true, includeZero: true } },
  ];

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function formatNumber(value) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    const magnitude = Math.abs(value);
    if (magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e5)) return value.toExponential(2);
    return String(Number(value.toPrecision(4)));
  }

  function colour(fraction) {
    const f = Math.min(Math.max(fraction, 0), 1) * (COLOURS.length - 1);
    const i = Math.min(Math.floor(f), COLOURS.length - 2), t = f - i;
    const [a, b] = [COLOURS[i], COLOURS[i + 1]];
    return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * t)).join(",")})`;
  }

  // An event's fields as short text: "key value" pairs, the time and the noisy per-worker maps left out.
  function describe(event) {
    if (event.message) return event.message;
    return Object.entries(event)
      .filter(([key]) => !["event", "time", "grad_norms", "worker_s", "worker_bytes"].includes(key))
      .map(([key, value]) => `${key} ${typeof value === "object" ? JSON.stringify(value) : value}`).join(", ");
  }

  class RunCharts {
    constructor(root) {
      this.root = root;
      this.rows = { loss: [], accuracy: [], lr: [], gradnorm: [], throughput: [], workers: [] };
      this.lossRowOfStep = new Map();
      this.markers = [];
      this.heat = { names: null, steps: [], logNorms: [] };
      this.listed = [];
      this.lastStep = 0;
      this.firstStep = null;
      this.graphs = {};
      this.pending = null;
      this.build();
    }

    build() {
      const grid = element("section", "charts");
      this.panels = {};
      for (const chart of CHARTS) {
        const panel = element("figure", "chart");
        panel.dataset.chart = chart.id;
        panel.dataset.points = "0";
        panel.append(element("figcaption", null, chart.title));
        const plot = element("div", "plot");
        plot.append(element("p", "empty", "no data yet"));
        panel.append(plot);
        grid.append(panel);
        this.panels[chart.id] = { panel, plot, chart };
      }
      this.heatPanel = element("section", "heatmap");
      this.heatPanel.dataset.rows = "0";
      this.heatPanel.append(element("h2", null, "Gradient norm of each parameter tensor, over steps"));
      this.heatBody = element("div", "heat-body");
      this.heatLabels = element("div", "heat-labels");
      this.heatCanvas = element("canvas", "heat-canvas");
      this.heatBody.append(this.heatLabels, this.heatCanvas);
      this.heatScale = element("p", "heat-scale", "no gradient norms yet");
      this.heatPanel.append(this.heatBody, this.heatScale);
      this.eventsPanel = element("section", "events");
      this.eventsPanel.append(element("h2", null, "Events, newest first"));
      this.eventList = element("ol", "event-list");
      this.eventsPanel.append(this.eventList);
      this.root.append(grid, this.heatPanel, this.eventsPanel);
    }

    addAll(events) { for (const event of events) this.add(event); }

    // Takes in one event and schedules a redraw.
    add(event) {
      switch (event.event) {
        case "job_start":
        case "resumed": {
          // A run continued from a checkpoint repeats the steps after it: they replace the old ones.
          const from = event.event === "job_start" ? event.start_step : event.step;
          if (typeof from === "number" && from < this.lastStep) this.truncate(from);
          if (typeof from === "number") this.lastStep = from;
          break;
        }
        case "step": this.addStep(event); break;
        case "eval": {
          const at = this.lossRowOfStep.get(event.step);
          if (at !== undefined) this.rows.loss[at][2] = event.test_loss;
          else { this.lossRowOfStep.set(event.step, this.rows.loss.length); this.rows.loss.push([event.step, null, event.test_loss]); }
          this.rows.accuracy.push([event.step, event.test_accuracy]);
          break;
        }
        case "worker_joined": this.mark("J", `${event.worker} joined (${event.host})`, event.workers); break;
        case "worker_left": {
          const moved = /released to the pool/.test(event.reason || "");
          this.mark(moved ? "M" : "L", `${event.worker} ${moved ? "moved to another job" : "left"}: ${event.reason}`, event.workers);
          break;
        }
        case "worker_lost": this.mark("X", `${event.worker} lost: ${event.reason}`, event.workers); break;
        case "straggler": this.mark("S", `${event.worker} straggled at step ${event.step}; its micro-batches went to ${(event.reissued_to || []).join(", ")}`); break;
      }
      if (event.event !== "step") {
        this.listed.push(event);
        if (this.listed.length > EVENTS_SHOWN) this.listed.shift();
      }
      this.scheduleRender();
    }

    addStep(event) {
      const step = event.step;
      if (step <= this.lastStep && this.rows.loss.length && this.rows.loss[this.rows.loss.length - 1][0] >= step) this.truncate(step - 1);
      this.lastStep = step;
      if (this.firstStep === null || step < this.firstStep) this.firstStep = step;
      this.lossRowOfStep.set(step, this.rows.loss.length);
      this.rows.loss.push([step, event.loss, null]);
      this.rows.lr.push([step, event.lr]);
      this.rows.gradnorm.push([step, event.grad_norm > 0 ? event.grad_norm : null, event.clipped && event.grad_norm > 0 ? event.grad_norm : null]);
      if (event.samples_per_s > 0) this.rows.throughput.push([step, event.samples_per_s]);
      if (typeof event.workers === "number") this.setWorkers(step, event.workers);
      if (event.grad_norms) {
        if (!this.heat.names) this.heat.names = Object.keys(event.grad_norms);
        this.heat.steps.push(step);
        this.heat.logNorms.push(Float64Array.from(this.heat.names, (name) => {
          const norm = event.grad_norms[name];
          return norm > 0 ? Math.log10(norm) : (norm === 0 ? -Infinity : NaN);
        }));
      }
    }

    setWorkers(step, workers) {
      const rows = this.rows.workers, last = rows[rows.length - 1];
      if (last && last[0] === step) last[1] = workers; else rows.push([step, workers]);
    }

    // A marker on the workers chart at the latest step.
    mark(shortText, text, workers) {
      if (typeof workers === "number") this.setWorkers(this.lastStep, workers);
      else if (!this.rows.workers.length) return;
      const rows = this.rows.workers, x = rows[rows.length - 1][0];
      this.markers.push({ series: "workers", x, shortText, text, width: 14, height: 14, cssClass: `mark-${shortText}` });
    }

    // Forgets everything after step `step`.
    truncate(step) {
      for (const key of Object.keys(this.rows)) this.rows[key] = this.rows[key].filter((row) => row[0] <= step);
      this.lossRowOfStep = new Map(this.rows.loss.map((row, index) => [row[0], index]));
      this.markers = this.markers.filter((marker) => marker.x <= step);
      const keep = this.heat.steps.findIndex((s) => s > step);
      if (keep >= 0) { this.heat.steps.length = keep; this.heat.logNorms.length = keep; }
    }

    scheduleRender() {
      if (this.pending) return;
      this.pending = setTimeout(() => this.renderNow(), 250);
    }

    renderNow() {
      clearTimeout(this.pending);
      this.pending = null;
      for (const id of Object.keys(this.panels)) this.renderChart(id);
      this.renderHeatMap();
      this.renderEvents();
    }

    renderChart(id) {
      const { panel, plot, chart } = this.panels[id], rows = this.rows[id];
      panel.dataset.points = String(rows.filter((row) => row[1] !== null).length);
      if (!rows.length) {
        // Steps without a worker count: a run in one process.
        if (id === "workers" && this.rows.loss.length) plot.querySelector(".empty").textContent = "no workers: a run in one process";
        return;
      }
      // Every chart spans the steps trained so far, so that they line up (an evaluation every N steps included).
      const span = this.lastStep - (this.firstStep ?? this.lastStep);
      const window = span > 0 ? [this.firstStep - span * 0.01, this.lastStep + span * 0.02] : null;
      const graph = this.graphs[id];
      if (!graph) {
        plot.textContent = "";
        this.graphs[id] = new Dygraph(plot, rows.slice(), Object.assign({
          labels: chart.labels, xlabel: "step", legend: "always", height: 220, strokeWidth: 1.5, dateWindow: window,
          colors: ["#1f77b4", "#ff7f0e"], valueFormatter: formatNumber,
          axes: { y: { valueFormatter: formatNumber, axisLabelFormatter: formatNumber, axisLabelWidth: 60 } },
        }, chart.options));
      } else {
        graph.updateOptions({ file: rows.slice(), dateWindow: window });
      }
      if (id === "workers") this.graphs[id].setAnnotations(this.markers.slice());
    }

    renderHeatMap() {
      const names = this.heat.names, columns = this.heat.logNorms;
      if (!names || !columns.length) return;
      this.heatPanel.dataset.rows = String(names.length);
      // Row labels: the tensor, its latest norm marked as `trainerd monitor` marks it, and else how many steps it
      // spent below or above the marks (a layer that vanished early and recovered shows it).
      const latest = columns[columns.length - 1];
      const below = new Array(names.length).fill(0), above = new Array(names.length).fill(0);
      const [lowMark, highMark] = [Math.log10(VANISHING), Math.log10(EXPLODING)];
      for (const column of columns) {
        column.forEach((value, index) => {
          if (value < lowMark) below[index]++;
          else if (value > highMark || Number.isNaN(value)) above[index]++;
        });
      }
      if (this.heatLabels.children.length !== names.length) {
        this.heatLabels.textContent = "";
        for (const name of names) {
          const row = element("div", "heat-row");
          row.dataset.tensor = name;
          row.append(element("span", "tensor", name), element("span", "norm"), element("span", "flag"));
          this.heatLabels.append(row);
        }
      }
      names.forEach((name, index) => {
        const row = this.heatLabels.children[index], norm = Math.pow(10, latest[index]);
        row.dataset.latest = String(norm);
        row.dataset.vanishingSteps = String(below[index]);
        row.dataset.explodingSteps = String(above[index]);
        row.classList.toggle("vanishing", norm < VANISHING);
        row.classList.toggle("exploding", norm > EXPLODING || Number.isNaN(norm));
        row.classList.toggle("vanished", !(norm < VANISHING) && below[index] > 0);
        row.classList.toggle("exploded", !(norm > EXPLODING || Number.isNaN(norm)) && above[index] > 0);
        row.querySelector(".norm").textContent = formatNumber(norm);
        row.querySelector(".flag").textContent =
          norm < VANISHING ? "↓ vanishing" : norm > EXPLODING ? "↑ exploding" : Number.isNaN(norm) ? "non-finite"
          : below[index] ? `↓ in ${below[index]} of ${columns.length} steps` : above[index] ? `↑ in ${above[index]} of ${columns.length} steps` : "";
      });
      // Cells: log10 of the norm, averaged over the steps a column covers, on one colour scale for the whole map.
      let low = Infinity, high = -Infinity;
      for (const column of columns) for (const value of column) if (isFinite(value)) { low = Math.min(low, value); high = Math.max(high, value); }
      if (!isFinite(low)) { low = -1; high = 0; }
      if (high - low < 1e-9) high = low + 1;
      const canvas = this.heatCanvas, rowHeight = 16;
      const width = Math.max(200, Math.floor(this.heatBody.clientWidth - this.heatLabels.offsetWidth - 8) || 600);
      const count = Math.min(columns.length, width);
      canvas.width = width;
      canvas.height = rowHeight * names.length;
      canvas.style.height = `${canvas.height}px`;
      const context = canvas.getContext("2d");
      const cellWidth = width / count;
      for (let c = 0; c < count; c++) {
        const from = Math.floor(c * columns.length / count), to = Math.max(from + 1, Math.floor((c + 1) * columns.length / count));
        for (let r = 0; r < names.length; r++) {
          let sum = 0, finite = 0, bad = false;
          for (let s = from; s < to; s++) {
            const value = columns[s][r];
            if (isFinite(value)) { sum += value; finite++; } else if (Number.isNaN(value)) bad = true;
          }
          context.fillStyle = bad ? "#ff00ff" : finite ? colour((sum / finite - low) / (high - low)) : colour(0);
          context.fillRect(Math.floor(c * cellWidth), r * rowHeight, Math.ceil(cellWidth), rowHeight - 1);
        }
      }
      const steps = this.heat.steps;
      this.heatScale.textContent = `steps ${steps[0]}–${steps[steps.length - 1]} left to right; log₁₀ of the norm: ${low.toFixed(1)} `;
      const bar = element("span", "heat-bar");
      bar.style.background = `linear-gradient(to right, ${COLOURS.map((c) => `rgb(${c.join(",")})`).join(", ")})`;
      this.heatScale.append(bar, document.createTextNode(` ${high.toFixed(1)}; magenta: not finite`));
    }

    renderEvents() {
      const list = this.eventList;
      list.textContent = "";
      for (let i = this.listed.length - 1; i >= 0; i--) {
        const event = this.listed[i], item = element("li");
        item.dataset.event = event.event;
        const when = typeof event.time === "number" ? new Date(event.time * 1000).toLocaleTimeString() : "";
        item.append(element("time", null, when), element("b", null, event.event), element("span", null, describe(event)));
        list.append(item);
      }
    }

    // One line about a run: its job, model, and how it ended.
    static summary(events) {
      const start = events.find((e) => e.event === "job_start") || {};
      const end = [...events].reverse().find((e) => ["done", "stopped", "job_end"].includes(e.event));
      const steps = events.filter((e) => e.event === "step").length;
      let text = `${start.job || "run"}: ${start.model || ""}, ${start.optimizer || ""}, ${steps} steps logged`;
      const done = [...events].reverse().find((e) => e.event === "done");
      if (done) text += `; done at step ${done.step}, loss ${formatNumber(done.loss)}, test accuracy ${(done.test_accuracy * 100).toFixed(2)} %, weights_sha256 ${done.weights_sha256}`;
      else if (end) text += `; ${end.event === "job_end" ? end.state : end.event} at step ${end.step}`;
      return text;
    }
  }

  RunCharts.formatNumber = formatNumber;
  global.RunCharts = RunCharts;
})(window);
