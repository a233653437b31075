// Line charts of metrics by step, drawn by uPlot (vendored: static/vendor/uplot, loaded before this module).
// A card owns one uPlot: it is made once the card has a width, resized with its container, and fed whole
// columns on each update (uPlot redraws thousands of points in a millisecond or two). Charts of one page
// share a cursor: hovering a step on one shows that step on all.

import {h, number} from "./dom.js";

export const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
                        "#4b5563", "#ea580c"];
const AXIS = {stroke: "#6b7280", grid: {stroke: "#eef0f4", width: 1}, ticks: {stroke: "#e5e7eb", width: 1},
              font: "11px system-ui, sans-serif"};

/** The y range: uPlot's padded one, or a unit around a flat line (a fraction stuck at 0 is not 0 to 100). */
function yRange(u, min, max) {
  if (min === null || max === null) return [0, 1];
  if (min === max) {  // a flat line: 0 (a fraction never clipped) is drawn at the bottom of [0, 1]
    if (min === 0) return [0, 1];
    const pad = Math.abs(min) * 0.5;
    return [min - pad, max + pad];
  }
  return window.uPlot.rangeNum(min, max, 0.1, true);
}

/** Legend values of each series' last point (an eval curve's last evaluation, not the last step). */
function showLatest(u) {
  const last = u.data[0].length - 1;
  if (last < 0) return;
  u.setLegend({idx: last}, false);
  u.data.slice(1).forEach((column, i) => {
    let at = last;
    while (at >= 0 && (column[at] === null || column[at] === undefined)) at -= 1;
    const cell = u.root.querySelectorAll(".u-legend .u-series")[i + 1]?.querySelector(".u-value");
    if (cell) cell.textContent = at < 0 ? "–" : number(column[at]);
  });
}

/** The y axis's width: room for its longest tick label (about 6.5 px a character at 11 px). */
function axisWidth(u, values) {
  const longest = Math.max(0, ...(values || []).map((v) => String(v).length));
  return Math.max(36, Math.ceil(longest * 6.5) + 18);
}

function tick(u, values) {
  return values.map((v) => (v === null ? "" : number(v, 3)));
}

/**
 * A chart card. `series`: [{label, color, dashed}]; setData(steps, columns) with one column per series.
 * `countSeries` is the index of the series whose points `data-points` counts (for tests and the header).
 */
export class ChartCard {
  constructor({id, title, series, syncKey, height = 190, onPick = null, className = ""}) {
    this.series = series;
    this.height = height;
    this.syncKey = syncKey;
    this.onPick = onPick;
    this.plot = null;
    this.zoomed = false;
    this.data = [[], ...series.map(() => [])];
    this.plotEl = h("div.chart-plot");
    this.el = h(`section.card.chart${className ? `.${className}` : ""}`, {"data-chart": id, "data-points": "0"},
      h("header.chart-title", h("h3", title), h("span.chart-hint", {title: "Drag to zoom, double-click to reset"})),
      this.plotEl);
    this.observer = new ResizeObserver(() => this.resize());
    this.observer.observe(this.plotEl);
  }

  options(width) {
    return {
      width, height: this.height,
      legend: {live: true},
      cursor: {sync: this.syncKey ? {key: this.syncKey} : undefined, drag: {x: true, y: false},
               points: {size: 6}},
      scales: {x: {time: false}, y: {range: yRange}},
      axes: [{...AXIS, size: 30}, {...AXIS, size: axisWidth, values: tick}],
      series: [
        {label: "step", value: (u, v) => (v === null ? "–" : String(v))},
        ...this.series.map((s) => ({
          label: s.label, stroke: s.color, width: s.dashed ? 1.25 : 1.75, dash: s.dashed ? [6, 4] : undefined,
          spanGaps: true, points: {show: s.dashed ? true : undefined, size: 4},
          value: (u, v) => (v === null ? "–" : number(v)),
        })),
      ],
      hooks: {
        setSelect: [(u) => { if (u.select.width > 4) this.zoomed = true; }],
        // Away from the cursor, the legend shows the latest values: what a live run is at now.
        setCursor: [(u) => { if (u.cursor.idx === null || u.cursor.idx === undefined) showLatest(u); }],
        ready: [(u) => {
          u.over.addEventListener("dblclick", () => { this.zoomed = false; });
          u.over.addEventListener("click", () => {
            const idx = u.cursor.idx;
            if (this.onPick && idx !== null && idx !== undefined && u.select.width <= 4) this.onPick(u.data[0][idx]);
          });
        }],
      },
    };
  }

  resize() {
    const width = Math.floor(this.plotEl.clientWidth);
    if (width <= 0) return;
    if (!this.plot) {
      this.plot = new window.uPlot(this.options(width), this.data, this.plotEl);
    } else if (Math.abs(this.plot.width - width) > 1) {
      this.plot.setSize({width, height: this.height});
    }
  }

  /** New data: `steps` and one column per series (null where a step has no value). */
  setData(steps, columns, countSeries = 0) {
    this.data = [steps, ...columns];
    const column = columns[countSeries] || [];
    this.el.dataset.points = String(column.reduce((n, v) => n + (v === null || v === undefined ? 0 : 1), 0));
    if (this.plot) {
      this.plot.setData(this.data, !this.zoomed);  // keep a zoomed-in view while data arrives
      if (this.plot.cursor.idx === null || this.plot.cursor.idx === undefined) showLatest(this.plot);
    }
  }

  destroy() {
    this.observer.disconnect();
    if (this.plot) this.plot.destroy();
  }
}

/** Charts of metric keys over one MetricTable: the job page's chart wall. */
export class MetricCharts {
  constructor({table, syncKey, onPick}) {
    this.table = table;
    this.syncKey = syncKey;
    this.onPick = onPick;
    this.cards = new Map();  // chart id -> {card, def}
    this.pending = false;
    this.drawn = -1;
  }

  /** The card of chart definition `def` ({id, title, series: [{key, eval}]}), made on first use. */
  card(def) {
    const known = this.cards.get(def.id);
    const signature = def.series.map((s) => s.key).join("|");
    if (known && known.signature === signature) return known.card;
    if (known) known.card.destroy();
    // An eval curve follows its training curve (chartsFor puts it right after), in the same colour, dashed.
    const series = [];
    for (const s of def.series) {
      const previous = series[series.length - 1];
      const color = s.eval && previous && !previous.dashed ? previous.color
        : PALETTE[series.filter((x) => !x.dashed).length % PALETTE.length];
      series.push({label: s.key, color, dashed: s.eval});
    }
    const card = new ChartCard({id: def.id, title: def.title, series, syncKey: this.syncKey, onPick: this.onPick});
    card.el.dataset.keys = signature;
    this.cards.set(def.id, {card, def, signature});
    if (known) known.card.el.replaceWith(card.el);
    this.fill(this.cards.get(def.id));
    return card;
  }

  fill({card, def}) {
    card.setData(this.table.steps, def.series.map((s) => this.table.column(s.key)));
  }

  /** Redraw every card at the next frame (many metrics arriving at once cost one redraw). */
  update() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      if (this.drawn === this.table.version) return;
      this.drawn = this.table.version;
      for (const entry of this.cards.values()) this.fill(entry);
    });
  }

  destroy() {
    for (const {card} of this.cards.values()) card.destroy();
    this.cards.clear();
  }
}
