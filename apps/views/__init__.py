"""The dashboard's data layer: views of a log by domain, each a fold per event type into a small state that
the plots read (:mod:`~rtopt.apps.views.view`), and the sources that feed them
(:mod:`~rtopt.apps.views.sources`).

- :mod:`~rtopt.apps.views.overview`: the event rate, feedback metrics per variant, the alert feed;
- :mod:`~rtopt.apps.views.decisions`: allocation of decisions, arm posteriors, A/B tests and canaries;
- :mod:`~rtopt.apps.views.detection`: detections, the responses to them, forecasts;
- :mod:`~rtopt.apps.views.studies`: Bayesian optimisation studies.
"""
