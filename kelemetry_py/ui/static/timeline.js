// The object tree beside a canvas timeline. Only the rows in view are in the DOM and on the canvas, so hundreds
// of objects and thousands of marks draw in a few milliseconds; zoom and pan only redraw.
import { html, kindBadge, raw, time } from "./format.js";

export const ROW_HEIGHT = 26;
const MIN_SPAN_MS = 1;

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function lowerBound(marks, t) {
  let lo = 0, hi = marks.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (marks[mid].t < t) lo = mid + 1; else hi = mid;
  }
  return lo;
}

export class Timeline {
  constructor(root, { onSelect, onView, onOpen }) {
    this.onSelect = onSelect;
    this.onView = onView;
    this.onOpen = onOpen;
    root.innerHTML = `<div class="tl-head"><div class="tl-tree-head">Objects</div><canvas class="tl-axis" aria-hidden="true"></canvas></div>
      <div class="tl-scroll" tabindex="0" role="tree" aria-label="Related objects and their activity">
        <div class="tl-inner"><div class="tl-tree"></div><div class="tl-lane"><canvas class="tl-canvas"></canvas></div></div>
      </div><div class="tl-tip" role="tooltip" hidden></div>`;
    this.root = root;
    this.scroll = root.querySelector(".tl-scroll");
    this.inner = root.querySelector(".tl-inner");
    this.tree = root.querySelector(".tl-tree");
    this.lane = root.querySelector(".tl-lane");
    this.canvas = root.querySelector(".tl-canvas");
    this.axis = root.querySelector(".tl-axis");
    this.tip = root.querySelector(".tl-tip");
    this.rows = [];
    this.selected = null; // {row, mark}
    this.activeRow = 0;
    this.view = { t0: 0, t1: 1 };
    this.fitted = true;
    this.frame = 0;
    this.renderedRows = "";
    this.scroll.addEventListener("scroll", () => this.schedule());
    this.resizer = new ResizeObserver(() => this.schedule());
    this.resizer.observe(this.scroll);
    this.themeListener = () => { this.colors = null; this.schedule(); };
    window.addEventListener("themechange", this.themeListener);
    this.bindPointer();
    this.scroll.addEventListener("keydown", (event) => this.onKey(event));
    this.tree.addEventListener("click", (event) => {
      const row = event.target.closest(".tl-row");
      if (row) this.selectRow(Number(row.dataset.index), { mark: "first" });
    });
    this.tree.addEventListener("dblclick", (event) => {
      const row = event.target.closest(".tl-row");
      if (row) this.onOpen?.(this.rows[Number(row.dataset.index)]);
    });
  }

  destroy() {
    this.resizer.disconnect();
    window.removeEventListener("themechange", this.themeListener);
    cancelAnimationFrame(this.frame);
  }

  /** rows: [{key, kind, name, namespace, depth, first, last, errors, warnings, marks: [{id, kind, t, d, ...}]}] */
  setData(rows, range) {
    const previous = this.selected ? { key: this.rows[this.selected.row]?.key, id: this.rows[this.selected.row]?.marks[this.selected.mark]?.id } : null;
    this.rows = rows;
    this.range = range;
    this.index = new Map();
    rows.forEach((row, r) => {
      row.marks.sort((a, b) => a.t - b.t);
      row.marks.forEach((mark, m) => this.index.set(`${row.key}|${mark.id}`, [r, m]));
    });
    this.inner.style.height = `${rows.length * ROW_HEIGHT}px`;
    this.renderedRows = "";
    if (this.fitted) this.fit(false);
    this.selected = null;
    if (previous && previous.id) this.selectMark(previous.key, previous.id, { scroll: false, notify: false });
    this.schedule();
  }

  extent() {
    let lo = Infinity, hi = -Infinity;
    for (const row of this.rows) {
      if (row.first !== null && row.first < lo) lo = row.first;
      if (row.last !== null && row.last > hi) hi = row.last;
    }
    if (!Number.isFinite(lo)) return { t0: this.range.from, t1: this.range.to };
    const pad = Math.max((hi - lo) * 0.04, 200);
    return { t0: Math.max(this.range.from, lo - pad), t1: Math.min(this.range.to, hi + pad) };
  }

  fit(notify = true) {
    this.view = this.extent();
    if (this.view.t1 - this.view.t0 < MIN_SPAN_MS) this.view.t1 = this.view.t0 + MIN_SPAN_MS;
    this.fitted = true;
    this.schedule();
    if (notify) this.onView?.(null);
  }

  setView(t0, t1) {
    if (!(t1 > t0)) return;
    this.view = { t0, t1 };
    this.fitted = false;
    this.schedule();
    this.onView?.(this.view);
  }

  zoom(factor, atFraction = 0.5) {
    const { t0, t1 } = this.view;
    const span = Math.max(MIN_SPAN_MS, (t1 - t0) * factor);
    const center = t0 + (t1 - t0) * atFraction;
    this.setView(center - span * atFraction, center - span * atFraction + span);
  }

  pan(fraction) {
    const shift = (this.view.t1 - this.view.t0) * fraction;
    this.setView(this.view.t0 + shift, this.view.t1 + shift);
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  x(t, width) {
    return ((t - this.view.t0) / (this.view.t1 - this.view.t0)) * width;
  }

  palette() {
    if (!this.colors) {
      this.colors = {
        audit: css("--mark-audit"), event: css("--mark-event"), diff: css("--mark-diff"), other: css("--mark-other"),
        error: css("--error"), warning: css("--warning"), bar: css("--bar"), grid: css("--grid"), text: css("--muted"),
        selected: css("--selected"), active: css("--row-active"), fg: css("--fg"),
      };
    }
    return this.colors;
  }

  sizeCanvas(canvas, width, height) {
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
      canvas.style.width = `${width}px`;
      canvas.style.height = `${height}px`;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    return ctx;
  }

  visibleRows() {
    const top = this.scroll.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT));
    const last = Math.min(this.rows.length, Math.ceil((top + this.scroll.clientHeight) / ROW_HEIGHT));
    return [first, last];
  }

  draw() {
    const width = this.lane.clientWidth;
    const height = this.scroll.clientHeight;
    if (!width || !height) return;
    const colors = this.palette();
    const [first, last] = this.visibleRows();
    this.drawTree(first, last);
    const ctx = this.sizeCanvas(this.canvas, width, height);
    ctx.clearRect(0, 0, width, height);
    const offset = this.scroll.scrollTop;
    const ticks = this.ticks(width);
    ctx.strokeStyle = colors.grid;
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (const tick of ticks) {
      const x = Math.round(this.x(tick, width)) + 0.5;
      ctx.moveTo(x, 0);
      ctx.lineTo(x, height);
    }
    ctx.stroke();
    const { t0, t1 } = this.view;
    for (let r = first; r < last; r++) {
      const row = this.rows[r];
      const y = r * ROW_HEIGHT - offset;
      const mid = y + ROW_HEIGHT / 2;
      if (r === this.activeRow) {
        ctx.fillStyle = colors.active;
        ctx.fillRect(0, y, width, ROW_HEIGHT);
      }
      if (row.first !== null) {
        const x0 = Math.max(-2, this.x(row.first, width));
        const x1 = Math.min(width + 2, this.x(Math.max(row.last, row.first), width));
        ctx.fillStyle = colors.bar;
        ctx.fillRect(x0, mid - 4, Math.max(2, x1 - x0), 8);
      }
      const marks = row.marks;
      for (let m = Math.max(0, lowerBound(marks, t0 - (t1 - t0) * 0.01) - 1); m < marks.length; m++) {
        const mark = marks[m];
        if (mark.t > t1) break;
        const x = this.x(mark.t, width);
        const w = Math.max(3, this.x(mark.t + mark.d, width) - x);
        ctx.fillStyle = mark.error ? colors.error : mark.warning ? colors.warning : colors[mark.kind] || colors.other;
        if (mark.kind === "event") {
          ctx.beginPath();
          ctx.moveTo(x, mid - 7);
          ctx.lineTo(x + 5, mid);
          ctx.lineTo(x, mid + 7);
          ctx.lineTo(x - 5, mid);
          ctx.closePath();
          ctx.fill();
        } else if (mark.kind === "diff") {
          ctx.beginPath();
          ctx.moveTo(x - 5, mid + 6);
          ctx.lineTo(x + 5, mid + 6);
          ctx.lineTo(x, mid - 6);
          ctx.closePath();
          ctx.fill();
        } else {
          ctx.fillRect(x - 1.5, mid - 7, w, 14);
        }
      }
    }
    if (this.selected) {
      const row = this.rows[this.selected.row];
      const mark = row?.marks[this.selected.mark];
      if (mark) {
        const y = this.selected.row * ROW_HEIGHT - offset + ROW_HEIGHT / 2;
        const x = this.x(mark.t, width);
        ctx.strokeStyle = colors.selected;
        ctx.lineWidth = 2;
        ctx.strokeRect(x - 7, y - 10, Math.max(14, this.x(mark.t + mark.d, width) - x + 10), 20);
      }
    }
    this.drawAxis(ticks);
  }

  ticks(width) {
    const span = this.view.t1 - this.view.t0;
    const wanted = Math.max(2, Math.floor(width / 110));
    const steps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4, 3e5, 6e5, 9e5, 18e5, 36e5, 72e5, 108e5, 216e5, 432e5, 864e5, 1728e5, 6048e5];
    const step = steps.find((s) => span / s <= wanted) || steps[steps.length - 1];
    this.tickStep = step;
    const out = [];
    for (let t = Math.ceil(this.view.t0 / step) * step; t <= this.view.t1; t += step) out.push(t);
    return out;
  }

  drawAxis(ticks) {
    const width = this.lane.clientWidth;
    const height = this.axis.clientHeight || 28;
    const ctx = this.sizeCanvas(this.axis, width, height);
    const colors = this.palette();
    ctx.clearRect(0, 0, width, height);
    ctx.fillStyle = colors.text;
    ctx.font = `12px ${css("--font-mono") || "monospace"}`;
    ctx.textBaseline = "middle";
    const millis = this.tickStep < 1000;
    for (const tick of ticks) {
      const x = this.x(tick, width);
      const label = time(tick, { millis, date: this.tickStep >= 864e5 });
      const w = ctx.measureText(label).width;
      ctx.fillText(label, Math.min(Math.max(2, x - w / 2), width - w - 2), height / 2);
    }
  }

  drawTree(first, last) {
    const buffer = 10;
    const from = Math.max(0, first - buffer);
    const to = Math.min(this.rows.length, last + buffer);
    const signature = `${from}:${to}:${this.activeRow}:${this.rows.length}`;
    if (signature === this.renderedRows) return;
    this.renderedRows = signature;
    const out = [];
    for (let r = from; r < to; r++) {
      const row = this.rows[r];
      out.push(html`<div class="tl-row${r === this.activeRow ? " active" : ""}${row.searched ? " searched" : ""}" role="treeitem"
        aria-level="${row.depth + 1}" aria-selected="${r === this.activeRow}" data-index="${r}" data-key="${row.key}"
        style="top:${r * ROW_HEIGHT}px;padding-left:${8 + row.depth * 14}px" title="${row.key}">
        ${raw(kindBadge(row.kind))}<span class="tl-name">${row.name}</span>
        ${row.errors ? raw(html`<span class="count error">${row.errors}</span>`) : ""}
        ${row.warnings ? raw(html`<span class="count warning">${row.warnings}</span>`) : ""}
      </div>`);
    }
    this.tree.innerHTML = out.join("");
  }

  bindPointer() {
    let drag = null;
    this.canvas.addEventListener("pointerdown", (event) => {
      drag = { x: event.clientX, t0: this.view.t0, t1: this.view.t1, moved: false };
      this.canvas.setPointerCapture(event.pointerId);
    });
    this.canvas.addEventListener("pointermove", (event) => {
      if (!drag) {
        const hit = this.hit(event);
        this.canvas.style.cursor = hit ? "pointer" : "grab";
        this.showTip(hit, event);
        return;
      }
      const dx = event.clientX - drag.x;
      if (Math.abs(dx) > 3) drag.moved = true;
      if (drag.moved) {
        const shift = (-dx / this.lane.clientWidth) * (drag.t1 - drag.t0);
        this.setView(drag.t0 + shift, drag.t1 + shift);
      }
    });
    this.canvas.addEventListener("pointerleave", () => this.showTip(null));
    this.canvas.addEventListener("pointerup", (event) => {
      const moved = drag?.moved;
      drag = null;
      if (moved) return;
      const hit = this.hit(event);
      if (hit) this.select(hit.row, hit.mark);
      else {
        const row = Math.floor((event.offsetY + this.scroll.scrollTop) / ROW_HEIGHT);
        if (row < this.rows.length) this.selectRow(row, { mark: "none" });
      }
      this.scroll.focus({ preventScroll: true });
    });
    this.canvas.addEventListener("wheel", (event) => {
      const horizontal = Math.abs(event.deltaX) > Math.abs(event.deltaY);
      if (event.ctrlKey || event.metaKey || event.altKey) {
        event.preventDefault();
        this.zoom(event.deltaY > 0 ? 1.25 : 0.8, event.offsetX / this.lane.clientWidth);
      } else if (event.shiftKey || horizontal) {
        event.preventDefault();
        this.pan(((horizontal ? event.deltaX : event.deltaY) / this.lane.clientWidth));
      }
    }, { passive: false });
  }

  hit(event) {
    const r = Math.floor((event.offsetY + this.scroll.scrollTop) / ROW_HEIGHT);
    const row = this.rows[r];
    if (!row) return null;
    const width = this.lane.clientWidth;
    let best = null, bestDistance = 7;
    const t = this.view.t0 + (event.offsetX / width) * (this.view.t1 - this.view.t0);
    const slack = (8 / width) * (this.view.t1 - this.view.t0);
    for (let m = Math.max(0, lowerBound(row.marks, t - slack) - 2); m < row.marks.length; m++) {
      const mark = row.marks[m];
      if (mark.t > t + slack) break;
      const x0 = this.x(mark.t, width), x1 = Math.max(x0 + 3, this.x(mark.t + mark.d, width));
      const distance = event.offsetX < x0 ? x0 - event.offsetX : event.offsetX > x1 ? event.offsetX - x1 : 0;
      if (distance < bestDistance) {
        best = { row: r, mark: m };
        bestDistance = distance;
      }
    }
    return best;
  }

  showTip(hit, event) {
    if (!hit) {
      this.tip.hidden = true;
      return;
    }
    const mark = this.rows[hit.row].marks[hit.mark];
    this.tip.innerHTML = html`<strong>${mark.title}</strong><br>${time(mark.t)} UTC${mark.user ? " · " + mark.user : ""}`;
    const box = this.root.getBoundingClientRect();
    this.tip.style.left = `${Math.min(event.clientX - box.left + 12, box.width - 320)}px`;
    this.tip.style.top = `${event.clientY - box.top + 14}px`;
    this.tip.hidden = false;
  }

  selectRow(r, { mark = "keep" } = {}) {
    if (r < 0 || r >= this.rows.length) return;
    this.activeRow = r;
    this.renderedRows = "";
    this.ensureVisible(r);
    const row = this.rows[r];
    if (mark === "first" && row.marks.length) this.select(r, 0);
    else if (mark === "nearest" && row.marks.length) {
      const t = this.selected ? this.rows[this.selected.row].marks[this.selected.mark]?.t ?? this.view.t0 : this.view.t0;
      this.select(r, Math.min(row.marks.length - 1, lowerBound(row.marks, t)));
    } else this.schedule();
  }

  select(r, m, { notify = true } = {}) {
    this.selected = { row: r, mark: m };
    this.activeRow = r;
    this.renderedRows = "";
    const mark = this.rows[r].marks[m];
    this.ensureVisible(r);
    if (mark && (mark.t < this.view.t0 || mark.t > this.view.t1)) {
      const span = this.view.t1 - this.view.t0;
      this.setView(mark.t - span / 2, mark.t + span / 2);
    }
    this.schedule();
    if (notify) this.onSelect?.(this.rows[r], mark);
  }

  selectMark(key, id, { scroll = true, notify = true } = {}) {
    const found = this.index.get(`${key}|${id}`);
    if (!found) return false;
    if (!scroll) {
      this.selected = { row: found[0], mark: found[1] };
      this.activeRow = found[0];
      this.renderedRows = "";
      if (notify) this.onSelect?.(this.rows[found[0]], this.rows[found[0]].marks[found[1]]);
      return true;
    }
    this.select(found[0], found[1], { notify });
    return true;
  }

  ensureVisible(r) {
    const top = r * ROW_HEIGHT;
    if (top < this.scroll.scrollTop) this.scroll.scrollTop = top;
    else if (top + ROW_HEIGHT > this.scroll.scrollTop + this.scroll.clientHeight) {
      this.scroll.scrollTop = top + ROW_HEIGHT - this.scroll.clientHeight;
    }
  }

  onKey(event) {
    const row = this.rows[this.activeRow];
    const handled = () => event.preventDefault();
    switch (event.key) {
      case "ArrowDown": handled(); this.selectRow(this.activeRow + 1, { mark: "nearest" }); break;
      case "ArrowUp": handled(); this.selectRow(this.activeRow - 1, { mark: "nearest" }); break;
      case "ArrowRight":
      case "ArrowLeft": {
        handled();
        const step = event.key === "ArrowRight" ? 1 : -1;
        if (event.shiftKey) { this.pan(step * 0.2); break; }
        if (!row || !row.marks.length) break;
        const current = this.selected && this.selected.row === this.activeRow ? this.selected.mark : step > 0 ? -1 : row.marks.length;
        const next = Math.min(row.marks.length - 1, Math.max(0, current + step));
        this.select(this.activeRow, next);
        break;
      }
      case "+": case "=": handled(); this.zoom(0.5, this.selectedFraction()); break;
      case "-": case "_": handled(); this.zoom(2, this.selectedFraction()); break;
      case "0": handled(); this.fit(); break;
      case "Home": handled(); this.selectRow(0, { mark: "nearest" }); break;
      case "End": handled(); this.selectRow(this.rows.length - 1, { mark: "nearest" }); break;
      default: break;
    }
  }

  selectedFraction() {
    const mark = this.selected ? this.rows[this.selected.row]?.marks[this.selected.mark] : null;
    if (!mark || mark.t < this.view.t0 || mark.t > this.view.t1) return 0.5;
    return (mark.t - this.view.t0) / (this.view.t1 - this.view.t0);
  }
}
