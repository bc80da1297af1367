"""Write the callpulse Grafana dashboards (grafana/dashboards/*.json) from one description.

    .venv/bin/python grafana/build_dashboards.py

The JSON files are committed; tests/deploy/test_deploy_files.py checks they equal this script's output, that
panel ids are unique, and (end to end) that every query runs against a real Prometheus.

Colour thresholds come from the configuration gauges (goals, thresholds) through Grafana's "config from
query results" transformation, never from numbers written into a panel.
"""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "callpulse-prometheus"}
OUT = Path(__file__).resolve().parent / "dashboards"


class Board:
    def __init__(self, uid: str, title: str, description: str, variables: list[dict], refresh: str = "15s",
                 time_from: str = "now-6h") -> None:
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
        self.refresh, self.time_from = refresh, time_from
        self.panels: list[dict] = []
        self.next_id = 1
        self.y = 0

    def _panel(self, kind: str, title: str, targets: list[dict], w: int, h: int, x: int, **extra: object) -> dict:
        panel = {"id": self.next_id, "type": kind, "title": title, "datasource": DS,
                 "gridPos": {"h": h, "w": w, "x": x, "y": self.y}, "targets": targets}
        panel.update(extra)
        self.next_id += 1
        self.panels.append(panel)
        return panel

    def row(self, title: str, repeat: str | None = None) -> None:
        panel = {"id": self.next_id, "type": "row", "title": title, "collapsed": False,
                 "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []}
        if repeat:
            panel["repeat"] = repeat
        self.next_id += 1
        self.panels.append(panel)
        self.y += 1

    def line(self, panels: list[tuple]) -> None:
        """Place panels side by side: (kind, title, targets, width, options)."""
        x = 0
        height = 8
        for kind, title, targets, w, extra in panels:
            height = extra.pop("h", 8)
            self._panel(kind, title, targets, w, height, x, **extra)
            x += w
        self.y += height

    def json(self) -> dict:
        return {
            "uid": self.uid, "title": self.title, "description": self.description, "tags": ["callpulse"],
            "schemaVersion": 38, "version": 1, "editable": True, "refresh": self.refresh, "timezone": "browser",
            "time": {"from": self.time_from, "to": "now"},
            "templating": {"list": self.variables}, "annotations": {"list": []}, "panels": self.panels,
        }


def q(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str | None = None) -> dict:
    target = {"refId": ref, "datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        target["instant"] = True
        target["range"] = False
    if fmt:
        target["format"] = fmt
    return target


def var(name: str, query: str, multi: bool = False, include_all: bool = False) -> dict:
    return {"name": name, "label": name, "type": "query", "datasource": DS, "refresh": 2, "sort": 1,
            "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
            "multi": multi, "includeAll": include_all, "current": {}}


def unit(u: str, decimals: int | None = None, **defaults: object) -> dict:
    out = {"defaults": {"unit": u, **defaults}, "overrides": []}
    if decimals is not None:
        out["defaults"]["decimals"] = decimals
    return out


def against(config_expr: str, good_above: bool) -> dict:
    """Colour thresholds from a configuration gauge (query B): green on the good side of it, red on the other."""
    steps = ([{"color": "red", "value": None}, {"color": "green", "value": 0}] if good_above
             else [{"color": "green", "value": None}, {"color": "red", "value": 0}])
    return {
        "transformations": [{"id": "configFromData", "options": {
            "configRefId": "B", "applyTo": {"id": "byFrameRefID", "options": "A"},
            "mappings": [{"fieldName": "target", "handlerKey": "threshold1"}]}}],
        "extra_target": q(config_expr, "target", "B", instant=True),
        "thresholds": {"mode": "absolute", "steps": steps},
    }


def stat(title: str, expr: str, u: str, w: int = 3, config: dict | None = None, decimals: int | None = None,
         h: int = 5, steps: list[dict] | None = None) -> tuple:
    targets = [q(expr, title, "A", instant=True)]
    field = unit(u, decimals)
    extra: dict = {"h": h, "options": {"colorMode": "background", "graphMode": "none", "textMode": "value",
                                      "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}}
    if config is not None:
        targets.append(config["extra_target"])
        field["defaults"]["thresholds"] = config["thresholds"]
        extra["transformations"] = config["transformations"]
    else:
        field["defaults"]["thresholds"] = {"mode": "absolute", "steps": steps or [{"color": "blue", "value": None}]}
    extra["fieldConfig"] = field
    return ("stat", title, targets, w, extra)


def series(title: str, targets: list[dict], u: str = "short", w: int = 12, h: int = 8, stack: bool = False,
           bars: bool = False) -> tuple:
    custom = {"drawStyle": "bars" if bars else "line", "fillOpacity": 60 if bars else 10,
              "stacking": {"mode": "normal" if stack else "none"}}
    return ("timeseries", title, targets, w, {"h": h, "fieldConfig": {"defaults": {"unit": u, "custom": custom},
                                                                      "overrides": []}})


# ---------------------------------------------------------------------------------------------------------------

def wallboard() -> Board:
    b = Board("callpulse-wallboard", "callpulse wallboard",
              "Readable across a room: one row per queue. Colours compare with each queue's configured goals and "
              "thresholds (callpulse_*_goal_ratio, callpulse_sl_threshold_seconds).",
              [var("queue", "label_values(callpulse_calls_entered_total, queue)", multi=True, include_all=True)],
              refresh="10s", time_from="now-15m")
    b.row("$queue", repeat="queue")
    Q = 'queue="$queue"'
    b.line([
        stat("Waiting", f"sum(callpulse_calls_waiting{{{Q}}})", "none", 3, decimals=0),
        stat("Oldest wait", f"max(callpulse_oldest_wait_seconds{{{Q}}})", "s", 3,
             against(f"max(callpulse_sl_threshold_seconds{{{Q}}})", good_above=False), decimals=0),
        # any caller past the SL threshold is already a breach: red from one
        stat("Waiting over SL", f"sum(callpulse_calls_waiting_over_sl{{{Q}}})", "none", 3, decimals=0,
             steps=[{"color": "green", "value": None}, {"color": "red", "value": 1}]),
        stat("Agents available", f'sum(callpulse_agents{{{Q},state="available"}})', "none", 3, decimals=0),
        stat("Service level today", f'max(callpulse_service_level_ratio{{{Q},window="today"}})', "percentunit", 3,
             against(f"max(callpulse_service_level_goal_ratio{{{Q}}})", good_above=True), decimals=0),
        stat("Abandoned today", f'max(callpulse_abandonment_ratio{{{Q},window="today"}})', "percentunit", 3,
             against(f"max(callpulse_abandonment_goal_ratio{{{Q}}})", good_above=False), decimals=1),
        stat("Abandoned 15 min", f'max(callpulse_abandonment_ratio{{{Q},window="15m"}})', "percentunit", 3,
             against(f"max(callpulse_abandonment_goal_ratio{{{Q}}})", good_above=False), decimals=1),
        stat("ASA 15 min", f'max(callpulse_average_speed_of_answer_seconds{{{Q},window="15m"}})', "s", 3,
             against(f"max(callpulse_sl_threshold_seconds{{{Q}}})", good_above=False), decimals=0),
    ])
    return b


def queue_detail() -> Board:
    b = Board("callpulse-queue", "callpulse queue detail", "One queue in depth.",
              [var("queue", "label_values(callpulse_calls_entered_total, queue)")])
    Q = 'queue="$queue"'

    def inc(metric: str, window: str = "15m", extra: str = "") -> str:
        return f"sum(increase({metric}{{{Q}{extra}}}[{window}]))"

    b.row("Volume")
    b.line([
        series("Offered, answered, abandoned per 15 min", [
            q(inc("callpulse_calls_offered_total"), "offered"), q(inc("callpulse_calls_answered_total"), "answered", "B"),
            q(inc("callpulse_calls_abandoned_total"), "abandoned", "C"),
            q(inc("callpulse_calls_entered_total"), "entered", "D")]),
        series("Arrivals per hour, this week and last (hour of day and weekday)", [
            q(inc("callpulse_calls_entered_total", "1h"), "this week"),
            q(f"sum(increase(callpulse_calls_entered_total{{{Q}}}[1h] offset 1w))", "last week", "B")],
            bars=True),
    ])
    b.line([
        series("Flow-outs by reason per hour", [q(f"sum by (reason) (increase(callpulse_calls_exited_total{{{Q}}}[1h]))",
                                                  "{{reason}}")], w=8, stack=True),
        series("Refused by reason per hour", [q(f"sum by (reason) (increase(callpulse_calls_refused_total{{{Q}}}[1h]))",
                                                "{{reason}}")], w=8, stack=True),
        series("Concurrency", [q(f"sum(callpulse_calls_talking{{{Q}}})", "talking"),
                               q(f"sum(callpulse_calls_on_hold{{{Q}}})", "on hold", "B"),
                               q(f"sum(callpulse_calls_waiting{{{Q}}})", "waiting", "C")], w=8, stack=True),
    ])
    b.row("Waiting")
    b.line([
        series("Queue wait percentiles (answered)", [
            q(f'histogram_quantile({p}, sum by (le) (rate(callpulse_queue_wait_seconds_bucket{{{Q},outcome="answered"}}[15m])))',
              f"p{int(p * 100)}", ref) for p, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))], u="s"),
        ("heatmap", "Queue wait (all outcomes)", [
            q(f"sum by (le) (increase(callpulse_queue_wait_seconds_bucket{{{Q}}}[$__rate_interval]))", "{{le}}",
              fmt="heatmap")], 12, {"h": 8, "options": {"calculate": False, "yAxis": {"unit": "s"}}}),
    ])
    b.line([
        series("Service level, every variant (15 min)", [
            q(f"queue:callpulse_service_level{variant}:ratio_rate15m{{{Q}}}", label, ref)
            for (variant, label), ref in zip([
                ("", "default: short abandons excluded"), ("_answered_only", "answered only"),
                ("_abandons_negative", "abandons negative"), ("_abandons_ignored", "abandons ignored"),
                ("_abandons_positive", "abandons positive"), ("_flowouts_in", "flow-outs in")], "ABCDEF", strict=True)],
            u="percentunit"),
        series("Abandonment rate", [
            q(f"queue:callpulse_abandonment:ratio_rate{w}{{{Q}}}", w, ref)
            for w, ref in (("5m", "A"), ("15m", "B"), ("1h", "C"))] + [
            q(f"max(callpulse_abandonment_goal_ratio{{{Q}}})", "goal", "D")], u="percentunit"),
    ])
    b.line([
        series("ASA and average abandon wait (15 min)", [
            q(f'max(callpulse_average_speed_of_answer_seconds{{{Q},window="15m"}})', "ASA"),
            q(f'max(callpulse_average_abandon_wait_seconds{{{Q},window="15m"}})', "average abandon wait", "B"),
            q(f'max(callpulse_longest_wait_seconds{{{Q},window="15m"}})', "longest wait", "C"),
            q(f"max(callpulse_sl_threshold_seconds{{{Q}}})", "SL threshold", "D")], u="s"),
        series("Agents by state", [q(f"sum by (state) (callpulse_agents{{{Q}}})", "{{state}}")], stack=True),
    ])
    b.row("Handling")
    b.line([
        series("Handle time", [
            q(f'max(callpulse_average_handle_time_seconds{{{Q},window="1h"}})', "AHT (1 h)"),
            q(f"sum(rate(callpulse_handle_seconds_sum{{{Q}}}[1h])) / sum(rate(callpulse_handle_seconds_count{{{Q}}}[1h]))",
              "AHT from the histogram", "B"),
            q(f'max(callpulse_average_hold_seconds{{{Q},window="1h"}})', "average hold (1 h)", "C")], u="s", w=8),
        series("Holds, transfers, agent no-answers per hour", [
            q(inc("callpulse_holds_total", "1h"), "holds"), q(inc("callpulse_calls_transferred_total", "1h"), "transfers", "B"),
            q(inc("callpulse_agent_missed_total", "1h"), "agent no-answers", "C")], w=8),
        series("Occupancy, transfer rate, CSAT", [
            q(f'max(callpulse_occupancy_ratio{{{Q},window="1h"}})', "occupancy"),
            q(f'max(callpulse_transfer_ratio{{{Q},window="1h"}})', "transfer rate", "B"),
            q(f'max(callpulse_csat_ratio{{{Q},window="today"}})', "CSAT today", "C")], u="percentunit", w=8),
    ])
    return b


def outbound() -> Board:
    b = Board("callpulse-outbound", "callpulse outbound campaigns", "Attempts and outcomes per campaign.",
              [var("campaign", "label_values(callpulse_outbound_attempts_total, campaign)", multi=True, include_all=True)])
    C = 'campaign=~"$campaign"'
    b.row("Campaigns")
    b.line([
        series("Attempts and outcomes per 15 min", [
            q(f"sum by (campaign) (increase(callpulse_outbound_{m}_total{{{C}}}[15m]))", f"{{{{campaign}}}} {m}", ref)
            for m, ref in (("attempts", "A"), ("connected", "B"), ("contacts", "C"), ("conversions", "D"))]),
        series("Connection, contact and conversion rate (1 h)", [
            q(f'max by (campaign) (callpulse_{m}_ratio{{{C},window="1h"}})', f"{{{{campaign}}}} {m}", ref)
            for m, ref in (("connection", "A"), ("contact", "B"), ("conversion", "C"))], u="percentunit"),
    ])
    b.line([
        series("Connection rate from the counters (1 h)", [
            q(f"sum by (campaign) (increase(callpulse_outbound_connected_total{{{C}}}[1h])) "
              f"/ sum by (campaign) (increase(callpulse_outbound_attempts_total{{{C}}}[1h]))", "{{campaign}}")],
            u="percentunit"),
        series("Contact and conversion rate today", [
            q(f'max by (campaign) (callpulse_contact_ratio{{{C},window="today"}})', "{{campaign}} contact"),
            q(f'max by (campaign) (callpulse_conversion_ratio{{{C},window="today"}})', "{{campaign}} conversion", "B")],
            u="percentunit"),
    ])
    return b


def oncall() -> Board:
    b = Board("callpulse-oncall", "callpulse on call", "The pipeline and every queue at a glance, for the person paged.",
              [], refresh="30s", time_from="now-3h")
    b.row("Pipeline")
    b.line([
        series("Events per second by type", [q("sum by (type) (rate(callpulse_events_total[5m]))", "{{type}}")],
               u="ops", w=8, stack=True),
        series("Rejected per second by reason", [q("sum by (reason) (rate(callpulse_events_rejected_total[5m]))",
                                                   "{{reason}}")], u="ops", w=8, stack=True),
        series("Duplicates, late events, retractions per second", [
            q("sum(rate(callpulse_events_duplicate_total[5m]))", "duplicates"),
            q("sum(rate(callpulse_events_late_total[5m]))", "late", "B"),
            q("sum(rate(callpulse_facts_retracted_total[5m]))", "retractions", "C")], u="ops", w=8),
    ])
    b.line([
        series("Consumer lag (messages)", [q("topic:callpulse_consumer_lag:sum", "{{topic}}")], w=8),
        series("Workers up", [q('up{job="callpulse"}', "{{instance}}")], w=8),
        ("table", "Firing alerts", [q('ALERTS{alertstate="firing"}', "{{alertname}}", instant=True, fmt="table")], 8,
         {"h": 8}),
    ])
    b.row("Queues")
    b.line([
        series("Oldest wait by queue", [q("max by (queue) (callpulse_oldest_wait_seconds)", "{{queue}}")], u="s"),
        series("Abandonment by queue (15 min)", [q("queue:callpulse_abandonment:ratio_rate15m", "{{queue}}")],
               u="percentunit"),
    ])
    return b


BOARDS = {"wallboard": wallboard, "queue-detail": queue_detail, "outbound": outbound, "oncall": oncall}


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(build().json(), indent=2) + "\n" for name, build in BOARDS.items()}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)


if __name__ == "__main__":
    main()
