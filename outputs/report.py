"""One self-contained HTML report of a run (`mmevol report`): statistics, charts, a gallery.

The file works offline: the CSS and the script are inline, the charts and images are
embedded (PNG charts, small JPEG images), and nothing is fetched. The gallery data is
one JSON block that the script renders with ``textContent`` only, and every text in the
HTML itself goes through ``html.escape``: item text comes from a model and must never
become markup.

The gallery is a sample of the run stratified over outcomes (every round kept something,
some rounds empty, every round empty, failed) and the first round's operator: each stratum
keeps a seeded reservoir while the samples stream by, so memory does not grow with the
run, and the same run gives the same gallery.

A run with ``--gates`` marks each kept item with its gate verdicts (needs the image or
answerable blind; the second judge's score and agreement), and the gallery's "gate" filter
shows the samples with at least one such item (among the items the report holds).
"""

from __future__ import annotations

import base64
import html
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmevol.outputs import trust
from mmevol.outputs.plots import CHARTS, chart_pngs
from mmevol.outputs.stats import compute_stats, tables
from mmevol.run.seed import prepare
from mmevol.runtime.images import ImageProblem, data_url
from mmevol.store.results import Store

IMAGE_SIDE = 256
IMAGE_QUALITY = 60
MAX_ITEMS = 12
"""Items shown per version of a sample; the rest are counted ("+N more")."""
MAX_DROPPED = 12
MAX_TEXT = 1500
"""Characters of one question or answer shown; longer text is cut with an ellipsis."""


@dataclass
class ReportInfo:
    """What ``write_report`` wrote."""

    path: Path
    bytes: int
    samples: int
    images: int
    without: Counter = field(default_factory=Counter)
    """Finished samples of the gallery shown without their image, by kind of problem."""
    problem: str | None = None
    """Set when most finished samples' images are missing: the root is likely wrong."""

    def left_out(self) -> str:
        """Return "N without (kind n, ...)" for the finished samples shown without image."""
        if not self.without:
            return ""
        kinds = ", ".join(f"{k} {n}" for k, n in self.without.most_common())
        return f"{sum(self.without.values())} without ({kinds})"

    def summary(self) -> str:
        """Return one line: the file written, its samples (with their image) and its size."""
        return (
            f"wrote {self.path}: {self.samples} samples ({self.images} with their image),"
            f" {self.bytes / 1e6:.1f} MB" + (f"; {self.left_out()}" if self.without else "")
        )


def outcome(status: str, kept: list[int]) -> str:
    """Return a sample's outcome: failed, unfinished, all kept, some empty or all empty."""
    if status == "failed":
        return "failed"
    if status != "done":
        return "unfinished"
    if kept and all(kept):
        return "all rounds kept"
    if any(kept):
        return "some rounds empty"
    return "all rounds empty"


def choose_samples(store: Store, n: int, seed: int = 0) -> list[str]:
    """Pick up to ``n`` hash_ids stratified over outcome and first operator (seed order)."""
    rng = random.Random(seed)
    reservoirs: dict[tuple[str, str], list[tuple[int, str]]] = {}
    seen: dict[tuple[str, str], int] = {}
    for row in store.gallery_keys():
        kept = [int(k) for k in (row["kept"] or "").split(",") if k != ""]
        ops = (row["operators"] or "").split(",")
        key = (outcome(row["status"], kept), ops[0] or "-")
        if key[0] == "unfinished":
            continue
        entry = (row["idx"] if row["idx"] is not None else -1, row["hash_id"])
        count = seen.get(key, 0) + 1
        seen[key] = count
        bucket = reservoirs.setdefault(key, [])
        if len(bucket) < n:
            bucket.append(entry)
        else:
            slot = rng.randrange(count)
            if slot < n:
                bucket[slot] = entry
    # Deal one sample per stratum in turn, so small strata (failures) are shown too.
    for bucket in reservoirs.values():
        rng.shuffle(bucket)
    chosen: list[tuple[int, str]] = []
    buckets = [reservoirs[k] for k in sorted(reservoirs)]
    while len(chosen) < n and any(buckets):
        for bucket in buckets:
            if bucket and len(chosen) < n:
                chosen.append(bucket.pop())
    return [h for _, h in sorted(chosen)]


def _cut(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


AGREES = 0.8
"""Agreement at which the gallery's filter counts the second judge as agreeing."""


def _gate(row: dict | None) -> dict | None:
    """Return what the gallery shows of one item's gate verdicts (None: no gate row)."""
    if row is None:
        return None
    return {
        "blind": row.get("blind_verdict"),
        "blind_answer": _cut(row.get("blind_answer")) if row.get("blind_answer") else None,
        "blind_reason": _cut(row.get("blind_reason")) if row.get("blind_reason") else None,
        "j2_improved": row.get("judge2_improved"),
        "j2_score": row.get("judge2_score"),
        "j2_reason": _cut(row.get("judge2_reason")) if row.get("judge2_reason") else None,
        "agreement": row.get("agreement"),
    }


def _item(
    item: dict, score: int | None = None, reason: str | None = None, gate: dict | None = None
) -> dict:
    return {
        "q": _cut(item.get("question")),
        "a": _cut(item.get("answer")),
        "format": str(item.get("format") or ""),
        "skills": [str(s) for s in item.get("skills") or []],
        "steps": len(item.get("steps") or []),
        "score": score,
        "reason": reason,
    } | ({"gate": _gate(gate)} if gate is not None else {})


def gallery_record(store: Store, hash_id: str, images: Path | None) -> dict | None:
    """Return what the gallery shows of one sample (image as a small data URL)."""
    detail = store.sample_detail(hash_id)
    if detail is None:
        return None
    raw = json.loads(detail["seed"]) if detail.get("seed") else None
    seed = prepare(detail["idx"] or 0, raw) if raw is not None else None
    sample = seed.sample if seed else None
    image_rel = raw.get("image") if isinstance(raw, dict) else None
    image, image_problem, image_kind = None, None, None
    if images is not None and isinstance(image_rel, str):
        try:  # resolved inside the root (symlinks followed), decoded as an image
            image = data_url(images, image_rel, max_side=IMAGE_SIDE, quality=IMAGE_QUALITY)
        except ImageProblem as err:
            image_problem, image_kind = str(err), err.kind
        except OSError as err:
            image_problem, image_kind = str(err), "image unreadable"
    else:
        image_problem, image_kind = "no image recorded for this sample", "no image path"
    v0 = [i.model_dump() for i in sample.seed_items] if sample else []
    rounds = []
    items_by_round: dict[int, list[dict]] = {}
    for row in detail["items"]:
        items_by_round.setdefault(row["round"], []).append(row)
    drops_by_round: dict[int, list[dict]] = {}
    for row in detail["dropped"]:
        drops_by_round.setdefault(row["round"], []).append(row)
    gates = store.gates_of(hash_id, detail.get("branch") or "main")
    for rec in detail["rounds"]:
        kept = items_by_round.get(rec["round"], [])
        drops = drops_by_round.get(rec["round"], [])
        rounds.append(
            {
                "round": rec["round"],
                "operator": rec["operator"],
                "attempts": rec["attempts"],
                "candidates": rec["candidates"],
                "empty": rec["reason"],
                "kept": [
                    _item(
                        json.loads(k["item"]),
                        k["score"],
                        k["judge_reason"],
                        gates.get((k["round"], k["position"])),
                    )
                    for k in kept[:MAX_ITEMS]
                ],
                "more_kept": max(0, len(kept) - MAX_ITEMS),
                "dropped": [_drop(d) for d in drops[:MAX_DROPPED]],
                "more_dropped": max(0, len(drops) - MAX_DROPPED),
            }
        )
    scores = [k["score"] for k in detail["items"] if k["score"] is not None]
    return {
        "id": hash_id,
        "idx": detail["idx"],
        "status": detail["status"],
        "outcome": outcome(detail["status"], [r["kept"] or 0 for r in detail["rounds"]]),
        "failure": detail.get("reason") if detail["status"] == "failed" else None,
        "image": image,
        "image_problem": image_problem,
        "image_kind": image_kind,
        "image_path": image_rel if isinstance(image_rel, str) else None,
        "caption": _cut(sample.caption if sample else ""),
        "boxes": [{"label": b.label, "bbox": list(b.bbox)} for b in sample.boxes] if sample else [],
        "v0": [_item(i) for i in v0[:MAX_ITEMS]],
        "more_v0": max(0, len(v0) - MAX_ITEMS),
        "rounds": rounds,
        "seed_dropped": [_drop(d) for d in drops_by_round.get(0, [])[:MAX_DROPPED]],
        "max_score": max(scores) if scores else None,
    }


def _drop(row: dict) -> dict:
    try:
        item = json.loads(row["item"]) if row["item"] else {}
    except ValueError:
        item = {}
    text = item.get("question") if isinstance(item, dict) else None
    if text is None:
        text = json.dumps(item, ensure_ascii=False)
    return {"stage": row["stage"], "reason": _cut(row["reason"]), "q": _cut(text)}


def _json_for_script(data: Any) -> str:
    # Inside <script>, "</script>" or "<!--" in a model's text would end the block: no "<"
    # survives (JSON reads \u003c back as "<"), nor the line separators JS once refused.
    text = json.dumps(data, ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _tables_html(stats: dict) -> str:
    parts = []
    for title, header, rows in tables(stats):
        parts.append(f"<h3>{html.escape(title)}</h3><table class='stats'><thead><tr>")
        parts.extend(f"<th>{html.escape(h)}</th>" for h in header)
        parts.append("</tr></thead><tbody>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        parts.append("</tbody></table>")
    return "".join(parts)


def _charts_html(pngs: dict[str, bytes]) -> str:
    return "".join(
        f"<figure class='chart' id='chart-{html.escape(name)}'>"
        f"<img alt='{html.escape(CHARTS[name][0])}' src='data:image/png;base64,"
        f"{base64.b64encode(data).decode()}'><figcaption>{html.escape(CHARTS[name][0])}"
        "</figcaption></figure>"
        for name, data in pngs.items()
    )


def write_report(
    results_db: Path,
    output: Path,
    samples: int = 300,
    seed: int = 0,
    min_score: int | None = None,
    images: Path | None = None,
) -> ReportInfo:
    """Write the report of the run at ``results_db`` to ``output``.

    ``min_score`` marks the export's ``--min-score`` cut-off on the score chart. Images are
    read from ``images``, else the run's recorded ``--images``. The report is written even
    when most finished samples' images are missing; ``ReportInfo.problem`` then says so
    (with the folder that holds them, if one nearby does).

    Raises:
        ExportProblem: ``output`` is a folder, a file of the run or its seed.
    """
    with Store(results_db) as store:
        trust.check_output(output, results_db, store.get_meta("seed"))
    stats = compute_stats(results_db)
    pngs = chart_pngs(stats, min_score)
    with Store(results_db) as store:
        settings = store.get_meta("settings") or {}
        root = trust.image_root(settings, images) if images or settings.get("images") else None
        gallery = []
        for hash_id in choose_samples(store, samples, seed):
            record = gallery_record(store, hash_id, root)
            if record is not None:
                gallery.append(record)
    # A failed sample's image problem is its failure, shown as such: only finished
    # samples are counted. The image's kind and path are for the counts, not the page.
    done = [
        (g.pop("image_kind"), g.pop("image_path"), g["image_problem"], g["status"] == "done")
        for g in gallery
    ]
    done = [(kind, path, line) for kind, path, line, finished in done if finished]
    title = f"mmevol run {stats['run']}"
    parts = {
        "title": html.escape(title),
        "models": html.escape(
            f"evolution {stats['models']['evolve']}, judge {stats['models']['judge']}"
        ),
        "charts": _charts_html(pngs),
        "tables": _tables_html(stats),
        "data": _json_for_script(
            {
                "samples": gallery,
                "gates": [g for g in (settings.get("gates") or "").split(",") if g],
                "agrees": AGREES,
            }
        ),
    }
    # One pass, so a placeholder inside inserted text is never replaced in turn.
    page = re.sub(r"\{(title|models|charts|tables|data)\}", lambda m: parts[m[1]], PAGE)
    trust.write_whole(output, lambda fh: fh.write(page))
    without = Counter(kind for kind, _, _ in done if kind)
    info = ReportInfo(
        path=output,
        bytes=len(page.encode("utf-8")),
        samples=len(gallery),
        images=sum(1 for g in gallery if g["image"]),
        without=without,
    )
    if root is not None:
        missing = [(path, line) for kind, path, line in done if kind == "image missing"]
        try:
            trust.check_found(
                root,
                unit="finished samples shown",
                done=0,
                written=len(done) - len(missing),
                considered=len(done),
                missing=len(missing),
                missing_images=[path for path, _ in missing[: trust.ROOT_SAMPLE]],
                example=missing[0][1] if missing else None,
                what="the report shows few images",
            )
        except trust.ExportProblem as problem:
            info.problem = str(problem)
    return info


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
h1 { margin: .6em 0 .2em; } h2 { margin-top: 1.2em; border-bottom: 1px solid #ccc; }
table.stats { border-collapse: collapse; margin: .3em 0 1em; font-size: 12px; }
table.stats td, table.stats th { border: 1px solid #ddd; padding: 2px 6px; text-align: left;
  vertical-align: top; }
table.stats th { background: #f3f3f3; }
.charts { display: grid; gap: 12px;
  grid-template-columns: repeat(auto-fill, minmax(min(100%, 560px), 1fr)); grid-auto-flow: dense; }
.chart { margin: 0; } .chart img { width: 100%; border: 1px solid #ddd; }
#chart-scores { grid-column: 1 / -1; }
.chart figcaption { font-size: 12px; color: #555; }
[hidden] { display: none !important; }
#filters { position: sticky; top: 0; background: #fff; padding: 6px 0; z-index: 2;
  border-bottom: 1px solid #ccc; display: flex; flex-wrap: wrap; gap: 10px; align-items: center; }
#cards { display: flex; flex-direction: column; gap: 12px; margin-top: 10px; }
.card { display: flex; gap: 12px; border: 1px solid #ccc; border-radius: 6px; padding: 8px; }
.card.failed { border-color: #c33; background: #fff6f6; }
.pic { flex: none; width: 256px; align-self: flex-start; }
.frame { position: relative; }
.frame img { width: 100%; display: block; }
.box { position: absolute; border: 2px solid #e11; box-sizing: border-box; }
.tag { position: absolute; left: 0; top: 0; background: #e11; color: #fff; font-size: 10px;
  line-height: 13px; padding: 0 3px; white-space: nowrap; visibility: hidden; z-index: 1; }
.tag.placed { visibility: visible; }
ol.labels { list-style: none; margin: 4px 0 0; padding: 0; font-size: 11px; color: #333;
  overflow-wrap: anywhere; }
ol.labels b { display: inline-block; min-width: 1.6em; background: #e11; color: #fff;
  text-align: center; border-radius: 2px; margin-right: 3px; font-weight: 600; }
.noimg { width: 256px; height: 120px; background: #eee; color: #777; display: flex;
  align-items: center; justify-content: center; text-align: center; font-size: 12px; }
.body { flex: 1; min-width: 0; }
.meta { font-size: 12px; color: #555; }
.versions { display: flex; gap: 8px; overflow-x: auto; margin-top: 6px; }
.version { flex: 1 1 0; min-width: 170px; border-left: 3px solid #89b; padding: 0 4px 0 6px;
  font-size: 12px; overflow-wrap: anywhere; }
.version h4 { margin: 2px 0; }
.item { margin: 4px 0; padding: 3px; background: #f7f7fa; border-radius: 3px; }
.item .q { font-weight: 600; white-space: pre-wrap; } .item .a { white-space: pre-wrap; }
.item .why { color: #555; font-style: italic; }
details.more > summary, details.drops > summary { cursor: pointer; color: #246; margin: 4px 0; }
.drop { color: #933; margin: 2px 0; } .empty { color: #a60; }
.score { background: #264; color: #fff; border-radius: 3px; padding: 0 4px; font-size: 11px; }
.mark { border-radius: 3px; padding: 0 4px; font-size: 11px; margin-right: 3px;
  border: 1px solid #999; }
.mark.needs_image { background: #e3f1e3; } .mark.answerable { background: #fbd9a6; }
.mark.undecided { background: #eee; } .mark.agrees { background: #e3ecf8; }
.mark.disagrees { background: #f6c9c9; }
.caption { font-size: 12px; color: #333; white-space: pre-wrap; overflow-wrap: anywhere; }
</style></head>
<body>
<h1>{title}</h1>
<p class="meta">Models: {models}. Made by <code>mmevol report</code>; works offline.</p>
<h2>Charts</h2><div class="charts" id="charts">{charts}</div>
<h2>Statistics</h2><div id="tables">{tables}</div>
<h2>Gallery</h2>
<div id="filters">
 <label>operator <select id="f-operator"><option value="">any</option></select></label>
 <label>round <select id="f-round"><option value="">any</option></select></label>
 <label>min score <select id="f-score"><option value="">any</option></select></label>
 <label>status <select id="f-status"><option value="">any</option></select></label>
 <label id="gate-filter" hidden>gate
  <select id="f-gate"><option value="">any</option></select></label>
 <span id="shown"></span>
</div>
<div id="cards"></div>
<p><button id="more" type="button">show more</button></p>
<script type="application/json" id="gallery-data">{data}</script>
<script>
"use strict";
(function () {
  var data = JSON.parse(document.getElementById("gallery-data").textContent);
  var samples = data.samples;
  var PAGE = 40;
  var limit = PAGE;
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function fill(id, values) {
    var select = document.getElementById(id);
    values.forEach(function (v) {
      var o = el("option", null, v); o.value = v; select.appendChild(o);
    });
  }
  function uniq(list) {
    return list.filter(function (v, i) { return list.indexOf(v) === i; }).sort();
  }
  var ops = [], rounds = [], outcomes = [];
  samples.forEach(function (s) {
    outcomes.push(s.outcome);
    s.rounds.forEach(function (r) { ops.push(r.operator); rounds.push(String(r.round)); });
  });
  fill("f-operator", uniq(ops));
  fill("f-round", uniq(rounds));
  fill("f-score", ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]);
  fill("f-status", uniq(outcomes));
  // The gate filter: a sample matches when one of its kept items shown has the verdict.
  var gates = data.gates || [];
  var GATE_CHOICES = {
    blind: [["needs_image", "needs the image"], ["answerable", "answerable blind"]],
    judge2: [["agrees", "judge2 agrees (" + data.agrees + "+)"],
      ["disagrees", "judge2 disagrees (< " + data.agrees + ")"]]
  };
  gates.forEach(function (g) {
    (GATE_CHOICES[g] || []).forEach(function (c) {
      var o = el("option", null, c[1]); o.value = c[0];
      document.getElementById("f-gate").appendChild(o);
    });
  });
  document.getElementById("gate-filter").hidden = gates.length === 0;
  function agrees(g) { return g.agreement !== null && g.agreement >= data.agrees; }
  function gateHas(it, want) {
    var g = it.gate;
    if (!g) { return false; }
    if (want === "needs_image" || want === "answerable") { return g.blind === want; }
    if (g.agreement === null || g.agreement === undefined) { return false; }
    return want === "agrees" ? agrees(g) : !agrees(g);
  }
  function value(id) { return document.getElementById(id).value; }
  function matches(s) {
    var op = value("f-operator"), rnd = value("f-round");
    var minScore = value("f-score"), status = value("f-status"), gate = value("f-gate");
    if (status && s.outcome !== status) { return false; }
    var rs = s.rounds.filter(function (r) { return !rnd || String(r.round) === rnd; });
    if (rnd && rs.length === 0) { return false; }
    if (op) {
      rs = rs.filter(function (r) { return r.operator === op; });
      if (rs.length === 0) { return false; }
    }
    if (gate && !rs.some(function (r) {
      return r.kept.some(function (k) { return gateHas(k, gate); });
    })) { return false; }
    if (minScore) {
      var best = -1;
      rs.forEach(function (r) {
        r.kept.forEach(function (k) {
          if (k.score !== null && k.score > best) { best = k.score; }
        });
      });
      if (best < Number(minScore)) { return false; }
    }
    return true;
  }
  function itemNode(it) {
    var d = el("div", "item");
    if (it.score !== null && it.score !== undefined) {
      d.appendChild(el("span", "score", it.score));
    }
    if (it.gate) { d.appendChild(gateMarks(it.gate)); }
    d.appendChild(el("div", "q", it.q));
    d.appendChild(el("div", "a", it.a));
    var facts = [];
    if (it.format) { facts.push("format " + it.format); }
    if (it.skills.length) { facts.push("skills " + it.skills.join(", ")); }
    facts.push(it.steps + " steps");
    d.appendChild(el("div", "meta", facts.join(" · ")));
    if (it.reason) { d.appendChild(el("div", "why", "judge: " + it.reason)); }
    return d;
  }
  function mark(cls, text, why) {
    var m = el("span", "mark " + cls, text);
    if (why) { m.title = why; }
    return m;
  }
  function gateMarks(g) {
    var marks = el("div", "gates");
    if (gates.indexOf("blind") >= 0) {
      var blindWhy = (g.blind_answer ? "blind answer: " + g.blind_answer + " / " : "") +
        (g.blind_reason || "");
      if (g.blind === "needs_image") {
        marks.appendChild(mark("needs_image", "needs the image", blindWhy));
      } else if (g.blind === "answerable") {
        marks.appendChild(mark("answerable", "answerable blind", blindWhy));
      } else {
        marks.appendChild(mark("undecided", "blind: undecided", blindWhy));
      }
    }
    if (gates.indexOf("judge2") >= 0) {
      if (g.agreement === null || g.agreement === undefined) {
        marks.appendChild(mark("undecided", "judge2: no verdict", g.j2_reason));
      } else {
        var text = g.j2_improved ? "judge2 " + g.j2_score + " · agreement " + g.agreement
          : "judge2: not improved";
        marks.appendChild(mark(agrees(g) ? "agrees" : "disagrees", text, g.j2_reason));
      }
    }
    return marks;
  }
  function dropNode(dr) {
    var text = "dropped (" + dr.stage + "): " + dr.reason + (dr.q ? " — " + dr.q : "");
    return el("div", "drop", text);
  }
  // The first SHOWN items of a version stand open; the rest wait behind a <details>, so a
  // long card is never cut and stays short until asked.
  var SHOWN = 3;
  function addItems(parent, items, notShown, noun) {
    items.slice(0, SHOWN).forEach(function (it) { parent.appendChild(itemNode(it)); });
    if (items.length > SHOWN) {
      var more = el("details", "more");
      more.appendChild(el("summary", null, "show " + (items.length - SHOWN) + " more " + noun));
      items.slice(SHOWN).forEach(function (it) { more.appendChild(itemNode(it)); });
      parent.appendChild(more);
    }
    if (notShown) {
      parent.appendChild(el("div", "meta", "+" + notShown + " more " + noun + " not in report"));
    }
  }
  function addDrops(parent, drops, notShown) {
    if (!drops.length) { return; }
    var box = el("details", "drops");
    box.appendChild(el("summary", null, drops.length + (notShown ? "+" + notShown : "") +
      " dropped"));
    drops.forEach(function (dr) { box.appendChild(dropNode(dr)); });
    if (notShown) { box.appendChild(el("div", "meta", "+" + notShown + " more not in report")); }
    parent.appendChild(box);
  }
  // Box labels: each box gets a tag inside the image, "n label" where it fits without
  // touching another tag and is no wider than its box or half the image (so labels never
  // paper over the picture), else just "n", else none; the list under the image names
  // every box by its number whenever a tag had to shorten or give way.
  function placeTags(frame, legend) {
    var W = frame.clientWidth, H = frame.clientHeight, placed = [], whole = 0;
    var tags = frame.querySelectorAll(".tag");
    function free(r) {
      return placed.every(function (p) {
        return r.x + r.w <= p.x || p.x + p.w <= r.x || r.y + r.h <= p.y || p.y + p.h <= r.y;
      });
    }
    function spot(tag, b, widest) {
      var w = tag.offsetWidth, h = tag.offsetHeight;
      var x0 = b[0] * W, y0 = b[1] * H, x1 = b[2] * W, y1 = b[3] * H;
      if (w > Math.min(widest || W, W) || h > H) { return null; }
      var tries = [[x0, y0], [x1 - w, y0], [x0, y1 - h], [x1 - w, y1 - h], [x0, y0 - h],
        [x0, y1], [x1 - w, y0 - h], [x1 - w, y1]];
      for (var y = y0 + h; y < y1 - h; y += h) {  // then anywhere inside the box
        for (var x = x0; x < x1 - w; x += w) { tries.push([x, y]); }
      }
      for (var i = 0; i < tries.length; i++) {
        var r = {x: Math.min(Math.max(tries[i][0], 0), W - w),
          y: Math.min(Math.max(tries[i][1], 0), H - h), w: w, h: h};
        if (free(r)) { return r; }
      }
      return null;
    }
    Array.prototype.forEach.call(tags, function (tag) {
      var b = tag.dataset.box.split(",").map(Number);
      var r = spot(tag, b, Math.max((b[2] - b[0]) * W, W / 2));
      if (r) { whole += 1; } else { tag.textContent = tag.dataset.n; r = spot(tag, b); }
      if (r) {
        tag.style.left = r.x + "px"; tag.style.top = r.y + "px"; placed.push(r);
        tag.classList.add("placed");
      } else {
        tag.hidden = true;
      }
    });
    legend.hidden = whole === tags.length;
    frame.dataset.placed = "1";
  }
  function picture(s) {
    var pic = el("div", "pic");
    if (!s.image) {
      pic.appendChild(el("div", "noimg", s.image_problem || "no image"));
      return pic;
    }
    var frame = el("div", "frame"), legend = el("ol", "labels");
    var img = el("img"); img.alt = s.id; frame.appendChild(img);
    s.boxes.forEach(function (b, n) {
      var x = b.bbox;
      var box = el("div", "box");
      box.style.left = (100 * x[0]) + "%"; box.style.top = (100 * x[1]) + "%";
      box.style.width = (100 * (x[2] - x[0])) + "%";
      box.style.height = (100 * (x[3] - x[1])) + "%";
      box.title = (n + 1) + " " + b.label;
      frame.appendChild(box);
      var tag = el("span", "tag", (n + 1) + " " + b.label);
      tag.dataset.n = String(n + 1); tag.dataset.box = x.join(",");
      frame.appendChild(tag);
      var li = el("li"); li.appendChild(el("b", null, n + 1));
      li.appendChild(document.createTextNode(b.label)); legend.appendChild(li);
    });
    img.addEventListener("load", function () { placeTags(frame, legend); });
    img.addEventListener("error", function () { legend.hidden = false; });
    img.src = s.image;
    pic.appendChild(frame);
    legend.hidden = true;
    pic.appendChild(legend);
    return pic;
  }
  function card(s) {
    var c = el("div", "card" + (s.status === "failed" ? " failed" : ""));
    c.dataset.id = s.id;
    c.dataset.operators = s.rounds.map(function (r) { return r.operator; }).join(",");
    c.appendChild(picture(s));
    var body = el("div", "body");
    body.appendChild(el("div", "meta", "#" + s.idx + " " + s.id + " · " + s.outcome));
    if (s.failure) { body.appendChild(el("div", "drop", "failed: " + s.failure)); }
    if (s.caption) { body.appendChild(el("div", "caption", "caption: " + s.caption)); }
    var versions = el("div", "versions");
    var v0 = el("div", "version");
    v0.appendChild(el("h4", null, "v0 (seed)"));
    addItems(v0, s.v0, s.more_v0, "items");
    addDrops(v0, s.seed_dropped, 0);
    versions.appendChild(v0);
    s.rounds.forEach(function (r) {
      var v = el("div", "version");
      v.appendChild(el("h4", null, "v" + r.round + " · " + r.operator + " · " + r.kept.length +
        (r.more_kept ? "+" + r.more_kept : "") + " of " + r.candidates + " kept"));
      if (r.empty) { v.appendChild(el("div", "empty", "empty round: " + r.empty)); }
      addItems(v, r.kept, r.more_kept, "kept");
      addDrops(v, r.dropped, r.more_dropped);
      versions.appendChild(v);
    });
    body.appendChild(versions);
    c.appendChild(body);
    return c;
  }
  function render() {
    var cards = document.getElementById("cards");
    while (cards.firstChild) { cards.removeChild(cards.firstChild); }
    var hits = samples.filter(matches);
    hits.slice(0, limit).forEach(function (s) { cards.appendChild(card(s)); });
    document.getElementById("shown").textContent =
      Math.min(limit, hits.length) + " shown of " + hits.length + " matching (" +
      samples.length + " in the report)";
    document.getElementById("more").style.display = hits.length > limit ? "" : "none";
  }
  ["f-operator", "f-round", "f-score", "f-status", "f-gate"].forEach(function (id) {
    document.getElementById(id).addEventListener("change", function () {
      limit = PAGE; render();
    });
  });
  document.getElementById("more").addEventListener("click", function () {
    limit += PAGE; render();
  });
  render();
}());
</script>
</body></html>
"""
