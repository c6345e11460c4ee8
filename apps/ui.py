"""The Panel dashboard: live HoloViews plots of a log, its state at a past seq, and what other policies
would have earned on it.

The same :class:`Dashboard` renders inline in Jupyter (attached to an engine of the notebook's process)
and in a browser (``rtopt dashboard`` serves it on 127.0.0.1, with Bokeh and Panel resources from the
server itself, so it needs no internet). A periodic callback folds what is new into the model and sends
the plots their new data; a view's section appears once events of its types are in the log.
"""

from __future__ import annotations

import datetime as dt
import html
import time as wall_clock
import webbrowser
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import holoviews as hv
import holoviews.plotting.bokeh
import pandas as pd
import panel as pn
from bokeh.server.server import Server
from rtopt.apps.access import Access, guard, is_loopback, url_of
from rtopt.apps.replay import policy_estimates, state_at
from rtopt.apps.views.decisions import Allocation, ArmPosteriors, ExperimentTests
from rtopt.apps.views.detection import Detections, Forecasts, Responses
from rtopt.apps.views.overview import AlertFeed, EventRate, FeedbackMetrics
from rtopt.apps.views.sources import READ_CHUNK, EngineFeed, LogModel, LogTail
from rtopt.apps.views.studies import Studies
from rtopt.apps.views.view import View

from rtopt import Engine, RtoptError

hv.extension("bokeh", logo=False)

CATCH_UP_BUDGET_S = 0.5  # longest a refresh reads before it draws, so a large log never freezes the page
PLOT_HEIGHT = 230
TABLE_ROWS = 12
PALETTE = hv.Cycle("Category10").values
_COLORS: dict[str, str] = {}


def _dates(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(time=pd.to_datetime(frame["time"], unit="s"))


def color_of(label: str) -> str:
    """The colour of an arm or variant (the part of ``label`` after its last '/'), the same in every plot.

    >>> color_of("greeting/v1") == color_of("v1") != color_of("v2")
    True
    """
    arm = label.rsplit("/", 1)[-1]
    return _COLORS.setdefault(arm, PALETTE[len(_COLORS) % len(PALETTE)])


def lines(frame: pd.DataFrame, y: str, key: str, title: str, x: str = "time") -> hv.NdOverlay:
    """One curve of ``y`` against ``x`` per value of the column ``key``."""
    if x == "time":
        frame = _dates(frame)
    curves = {
        name: hv.Curve(group, x, y, label=str(name)).opts(color=color_of(str(name)))
        for name, group in frame.groupby(key, sort=True)
    }
    return hv.NdOverlay(curves, kdims=[key]).opts(
        hv.opts.Curve(tools=["hover"], framewise=True),
        hv.opts.NdOverlay(title=title, height=PLOT_HEIGHT, responsive=True, framewise=True, legend_position="right"),
    )


def labelled(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """``frame`` with a ``label`` column joining ``columns`` with '/'."""
    return frame.assign(label=frame[list(columns)].astype(str).agg("/".join, axis=1))


def rate_plot(frame: pd.DataFrame) -> hv.Area:
    """Events per second of event time."""
    return hv.Area(_dates(frame), "time", "rate").opts(
        title="events per second (event time)", height=PLOT_HEIGHT, responsive=True, framewise=True, tools=["hover"]
    )


def intervals_plot(frame: pd.DataFrame) -> hv.Overlay:
    """Each arm's mean with its 95 % interval."""
    frame = labelled(frame.dropna(subset=["mean"]), "experiment", "arm")
    bars = frame.assign(minus=frame["mean"] - frame["low"], plus=frame["high"] - frame["mean"])
    return (
        hv.ErrorBars(bars, "label", ["mean", "minus", "plus"])
        * hv.Scatter(frame, "label", ["mean", "p_best", "pulls"]).opts(size=9, tools=["hover"])
    ).opts(
        hv.opts.ErrorBars(framewise=True),
        hv.opts.Scatter(framewise=True),
        hv.opts.Overlay(title="mean reward and 95 % interval per arm", height=PLOT_HEIGHT, responsive=True),
    )


def p_value_plot(frame: pd.DataFrame) -> hv.Overlay:
    """The always-valid p-value of each variant against the control, analysis after analysis."""
    frame = labelled(frame, "experiment", "variant")
    return lines(frame, "msprt_p", "label", "mSPRT p-value per variant (line: 0.05)", x="analysis") * hv.HLine(
        0.05
    ).opts(color="gray", line_dash="dashed")


def study_plot(frame: pd.DataFrame) -> hv.Overlay:
    """Per study, the best value so far (line) and each observed value (points), observation after observation."""
    points = {
        name: hv.Scatter(group, "iteration", "value", label=str(name)).opts(color=color_of(str(name)), alpha=0.5)
        for name, group in frame.groupby("study", sort=True)
    }
    best = lines(frame, "best", "study", "best value so far (line) and observed values", x="iteration")
    observed = hv.NdOverlay(points, kdims=["study"]).opts(hv.opts.Scatter(size=5, tools=["hover"], framewise=True))
    return (best * observed).opts(ylabel="objective")


def forecast_plot(frame: pd.DataFrame) -> hv.Overlay:
    """Per series, the actual window values, the forecasts and their prediction interval (shaded)."""
    frame = _dates(frame.assign(label=frame["metric"] + " " + frame["key"]))
    layers: list[hv.Element] = []
    for label, series in frame.groupby("label", sort=True):
        color = color_of(str(label))
        predicted = series.dropna(subset=["forecast"])
        layers += [
            hv.Area(predicted, "time", ["low", "high"], label=f"{label} interval").opts(color=color, alpha=0.2),
            hv.Curve(predicted, "time", "forecast", label=f"{label} forecast").opts(color=color, line_dash="dashed"),
            hv.Curve(series.dropna(subset=["actual"]), "time", "actual", label=f"{label} actual").opts(color=color),
        ]
    return hv.Overlay(layers or [hv.Curve([], "time", "actual")]).opts(
        hv.opts.Curve(tools=["hover"], framewise=True),
        hv.opts.Area(framewise=True),
        hv.opts.Overlay(
            title="forecast (dashed, with interval) and actual",
            ylabel="window value",
            height=PLOT_HEIGHT,
            responsive=True,
            framewise=True,
        ),
    )


def estimates_plot(frame: pd.DataFrame) -> hv.Overlay:
    """Each policy's value with its interval."""
    bars = frame.assign(minus=frame["value"] - frame["low"], plus=frame["high"] - frame["value"])
    return (
        hv.ErrorBars(bars, "policy", ["value", "minus", "plus"]) * hv.Scatter(frame, "policy", "value").opts(size=9)
    ).opts(hv.opts.Overlay(title="reward per decision, 95 % interval", height=PLOT_HEIGHT, responsive=True))


class Section:
    """A titled part of the page over one frame of a view: live plots of it and, optionally, a table.

    >>> from rtopt import Envelope
    >>> rate = EventRate()
    >>> model = LogModel([rate])
    >>> section = Section("Event rate", lambda: rate.frame(model.state_of(rate)), [rate_plot])
    >>> _ = model.add([Envelope(1, "id", "Feedback", "p", 30.0, 0.0, None, None, 1, None)])
    >>> section.refresh()
    >>> section.pipes[0].data["events"].tolist()
    [1.0]
    """

    def __init__(
        self,
        title: str,
        frame: Callable[[], pd.DataFrame],
        plots: Sequence[Callable[[pd.DataFrame], hv.Element]] = (),
        table: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    ) -> None:
        self.frame = frame
        self.table = table
        data = frame()
        self.pipes = [hv.streams.Pipe(data=data) for _ in plots]
        panes: list[Any] = [
            pn.pane.HoloViews(_live(make, pipe), sizing_mode="stretch_width")
            for make, pipe in zip(plots, self.pipes, strict=True)
        ]
        self.rows = None if table is None else pn.pane.DataFrame(table(data), index=False, sizing_mode="stretch_width")
        if self.rows is not None:
            panes.append(self.rows)
        grid = pn.GridBox(*panes, ncols=2, sizing_mode="stretch_width") if len(panes) > 2 else pn.Row(*panes)
        self.panel = pn.Column(f"### {title}", grid, sizing_mode="stretch_width")

    def refresh(self) -> None:
        """Send the plots and the table the view's current frame."""
        data = self.frame()
        for pipe in self.pipes:
            pipe.send(data)
        if self.rows is not None and self.table is not None:
            self.rows.object = self.table(data)


def _live(make: Callable[[pd.DataFrame], hv.Element], pipe: hv.streams.Pipe) -> hv.DynamicMap:
    """A plot redrawn from each frame ``pipe`` sends."""

    def plot(data: pd.DataFrame) -> hv.Element:
        return make(data)

    return hv.DynamicMap(plot, streams=[pipe])


def _head(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.head(TABLE_ROWS)


def sections_for(view: View[Any], model: LogModel) -> list[Section]:
    """The sections that show ``view`` of ``model``."""

    def read(frame: Callable[[Any], pd.DataFrame]) -> Callable[[], pd.DataFrame]:
        return lambda: frame(model.state_of(view))

    match view:
        case EventRate():
            return [
                Section(view.title, read(view.frame), [rate_plot]),
                Section("Events by type", model.counts_frame, table=_head),
            ]
        case FeedbackMetrics():
            titles = {
                "quality": "mean quality",
                "latency_p50": "latency p50 (ms)",
                "latency_p95": "latency p95 (ms)",
                "error_rate": "error rate",
                "cost": "mean cost (USD)",
                "count": "feedback per window",
            }
            plots = [_metric_plot(metric, title) for metric, title in titles.items()]
            return [Section(view.title, read(view.frame), plots)]
        case Allocation():
            return [Section(view.title, read(view.frame), [_allocation_plot])]
        case ArmPosteriors():
            return [Section(view.title, read(view.frame), [intervals_plot], table=lambda f: f.round(4))]
        case ExperimentTests():
            return [
                Section(view.title, read(view.frame), [p_value_plot], table=lambda f: _head(f.iloc[::-1].round(4))),
                Section("Experiment status", read(view.status_frame), table=_head),
            ]
        case Studies():
            return [
                Section(view.title, read(view.frame), [study_plot]),
                Section("Study status", read(view.status_frame), table=lambda f: _head(f.round(4))),
                Section("Suggestions", read(view.suggestions_frame), table=_feed_rows),
            ]
        case Detections():
            return [
                Section(view.title, read(view.frame), table=_feed_rows),
                Section("Recommendations of the patterns", read(view.recommendations_frame), table=_feed_rows),
            ]
        case Responses():
            return [Section(view.title, read(view.frame), table=_feed_rows)]
        case Forecasts():
            return [
                Section(view.title, read(view.frame), [forecast_plot]),
                Section("Forecast errors so far", read(view.errors_frame), table=lambda f: _head(f.round(4))),
            ]
        case AlertFeed():
            return [Section(view.title, read(view.frame), table=_feed_rows)]
    raise TypeError(f"no section shows a {type(view).__name__}")


def _metric_plot(metric: str, title: str) -> Callable[[pd.DataFrame], hv.NdOverlay]:
    return lambda frame: lines(frame, metric, "variant", title)


def _allocation_plot(frame: pd.DataFrame) -> hv.NdOverlay:
    return lines(labelled(frame, "experiment", "arm"), "share", "label", "share of decisions per arm")


def _feed_rows(frame: pd.DataFrame) -> pd.DataFrame:
    rows = _head(frame).round(4)
    clock = {column: _clock(rows[column]) for column in ("time", "change_point") if column in rows}
    return rows.assign(**clock)


def _clock(seconds: pd.Series) -> pd.Series:
    return pd.to_datetime(seconds, unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")


class Dashboard:
    """The dashboard of one log, for one page or notebook output: ``panel`` is what to show, and
    ``refresh()`` (called every ``period_ms`` once shown) brings it up to date.

    >>> from rtopt import Feedback
    >>> engine = Engine.open(":memory:", seed=1, handlers=[])
    >>> page = Dashboard(LogTail(engine))
    >>> _ = engine.publish(Feedback(prompt_id="p", variant_id="v1", response_time_ms=80.0, success=True,
    ...                             quality_score=0.9), time=0.0)
    >>> page.refresh()
    >>> 'id="events-seen">1<' in page.status.object, [s.visible for s in page.slots][:2]
    (True, [True, True])
    """

    def __init__(self, tail: LogTail, *, period_ms: int = 1000, history: bool = True) -> None:
        self.tail = tail
        self.period_ms = period_ms
        self.sections: dict[int, list[Section]] = {}
        self.shown_seq = -1
        self.model = tail.model
        self.status = pn.pane.HTML(sizing_mode="stretch_width")
        self.slots = [pn.Column(visible=False, sizing_mode="stretch_width") for _ in tail.model.views]
        parts: list[Any] = [pn.pane.HTML(f"<h2>rtopt: {html.escape(tail.location)}</h2>"), self.status, *self.slots]
        self.history: History | None = None
        if history and tail.location != ":memory:":
            self.history = History(tail)
            parts.append(self.history.panel)
        self.panel = pn.Column(*parts, sizing_mode="stretch_width")
        self.refresh()

    def start(self) -> Dashboard:
        """Refresh every ``period_ms`` in the current session (a served page or a notebook)."""
        pn.state.add_periodic_callback(self.refresh, period=self.period_ms)
        return self

    def __panel__(self) -> pn.Column:
        return self.panel

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self.panel._repr_mimebundle_(include, exclude)

    def refresh(self) -> None:
        """Fold what the log gained (reading for at most a short budget), then update what changed."""
        started = wall_clock.perf_counter()
        while self.tail.poll() == READ_CHUNK and wall_clock.perf_counter() - started < CATCH_UP_BUDGET_S:
            pass
        model = self.tail.model
        if model is not self.model:  # the log was replaced: start the page over
            self.model, self.shown_seq = model, -1
            self.sections.clear()
            for slot in self.slots:
                slot.clear()
                slot.visible = False
        if model.last_seq == self.shown_seq:
            return
        self.shown_seq = model.last_seq
        shown = model.shown()
        for index, view in enumerate(model.views):
            if view not in shown:
                continue
            if index not in self.sections:
                self.sections[index] = sections_for(view, model)
                self.slots[index].extend(section.panel for section in self.sections[index])
                self.slots[index].visible = True
            else:
                for section in self.sections[index]:
                    section.refresh()
        span = ""
        if model.first_time is not None and model.last_time is not None:
            span = f" &middot; event time {_when(model.first_time)} .. {_when(model.last_time)}"
        self.status.object = (
            f'<p style="font-size:1.3em">events seen: <b id="events-seen">{model.events_seen:,}</b>'
            f" &middot; last seq {model.last_seq:,}{span}</p>"
        )
        if self.history is not None:
            self.history.extend_to(model.last_seq)


def _when(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


class History:
    """The state at a past seq (a replay of the log up to it) and a what-if of other policies on the log.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.sqlite"
    >>> with Engine.open(path, seed=1) as engine:
    ...     _ = engine.define_experiment("g", arms=["a", "b"], time=0.0)
    >>> history = History(LogTail(path))
    >>> history.show_past(1)
    >>> history.past.objects[0].object
    'State at seq 1 (event time 1970-01-01 00:00:00):'
    """

    def __init__(self, tail: LogTail) -> None:
        self.tail = tail
        last = max(tail.model.last_seq, 1)
        self.slider = pn.widgets.IntSlider(label="seq", start=1, end=last, value=last, sizing_mode="stretch_width")
        self.slider.param.watch(self._show_past, "value_throttled")
        self.past = pn.Column(sizing_mode="stretch_width")
        self.experiment = pn.widgets.Select(label="experiment", options=[])
        estimate = pn.widgets.Button(label="estimate other policies", color="primary")
        estimate.on_click(self._estimate)
        self.estimates = pn.Column(sizing_mode="stretch_width")
        self.panel = pn.Column(
            "### History: the state at a past seq (rebuilt by replay)",
            self.slider,
            self.past,
            "### What if: other policies on the decisions of this log (off-policy estimates)",
            pn.Row(self.experiment, estimate),
            self.estimates,
            sizing_mode="stretch_width",
        )

    def extend_to(self, last_seq: int) -> None:
        """Let the slider reach ``last_seq`` (following the end while it is there) and offer the experiments
        seen so far."""
        end = max(last_seq, 1)
        following = self.slider.value == self.slider.end or self.slider.value > end
        self.slider.param.update(end=end, **({"value": end} if following else {}))
        model = self.tail.model
        experiments = sorted(model.state_of(model.view(Allocation)))
        if experiments != self.experiment.options:
            self.experiment.options = experiments
            if self.experiment.value not in experiments:
                self.experiment.value = experiments[0]

    def _show_past(self, event: Any) -> None:
        self.show_past(event.new)

    def show_past(self, seq: int) -> None:
        """Replay the log up to ``seq`` and show its handlers' state."""
        past = state_at(self.tail.location, seq)
        when = f" (event time {_when(past.time)})" if past.time is not None else ""
        parts: list[Any] = [f"State at seq {seq:,}{when}:"]
        if len(past.arms):
            parts.append(pn.pane.DataFrame(past.arms.round(4), index=False, sizing_mode="stretch_width"))
        if len(past.experiments):
            parts.append(pn.pane.DataFrame(past.experiments, index=False, sizing_mode="stretch_width"))
        self.past.objects = parts

    def _estimate(self, _: Any) -> None:
        if self.experiment.value and self.tail.engine is not None:
            self.show_estimates(self.experiment.value)

    def show_estimates(self, experiment: str) -> None:
        """Show what the logged policy earned and what other policies would have, side by side."""
        frame = policy_estimates(self.tail.engine, experiment)
        if frame.empty:
            self.estimates.objects = [f"{experiment}: no decision with a learnt reward yet"]
            return
        self.estimates.objects = [
            pn.Row(
                pn.pane.HoloViews(estimates_plot(frame), sizing_mode="stretch_width"),
                pn.pane.DataFrame(frame.round(4), index=False),
            )
        ]


def dashboard(source: Engine | str | Path, *, period_ms: int = 1000) -> Dashboard:
    """The dashboard of an engine of this process (live, by subscription) or of a log file (tailed); it
    renders in Jupyter (and in any Panel layout) and refreshes every ``period_ms``."""
    tail = EngineFeed(source) if isinstance(source, Engine) else LogTail(source)
    return Dashboard(tail, period_ms=period_ms).start()


def dashboard_server(
    location: str | Path,
    *,
    port: int = 5006,
    address: str = "127.0.0.1",
    period_ms: int = 1000,
    access: Access | None = None,
) -> Server:
    """The server of the dashboard of the log at ``location`` on ``address``:``port``, bound but not started;
    every page shares one reader of the log. It answers only the requests ``access`` admits (by default:
    those naming this address, or a loopback name, in their Host header); beyond this machine, ``access``
    must ask for a token."""
    access = Access.serving(address, port) if access is None else access
    if access.token is None and not is_loopback(address):
        raise RtoptError(f"address = {address!r} serves beyond this machine: give access a token")
    tail = LogTail(location)

    def page() -> pn.Column:
        return Dashboard(tail, period_ms=period_ms).start().panel

    server = pn.serve(
        {"/": page},
        port=port,
        address=address,
        websocket_origin=access.origins,
        show=False,
        start=False,
        verbose=False,
        title="rtopt dashboard",
    )
    guard(server._tornado, access)  # the Tornado application behind Bokeh's server: no public accessor
    return server


def serve(
    location: str | Path,
    *,
    port: int = 5006,
    address: str = "127.0.0.1",
    period_ms: int = 1000,
    show: bool = False,
    access: Access | None = None,
) -> None:
    """Serve the dashboard of the log at ``location`` (see :func:`dashboard_server`) until interrupted;
    ``show`` opens it in a browser."""
    access = Access.serving(address, port) if access is None else access
    server = dashboard_server(location, port=port, address=address, period_ms=period_ms, access=access)
    if show:  # not Bokeh's show(), whose URL names the address listened on, 0.0.0.0 included
        server.io_loop.add_callback(webbrowser.open, url_of(address, port) + access.entry_path()[1:])
    server.start()
    server.io_loop.start()
