"""``tailor demo``: a simulated shop driven through a real Tailor server, truth vs findings.

One command starts ``tailor serve`` on its embedded defaults (private Redis, chdb) in
``./data/demo``, defines a shop's experiments (hero banner A/B test with a holdout, a ``vw_cb``
product carousel, a frequency-capped offer, a newsletter's subject line and send time), simulates
a few days of shoppers and newsletter readers whose behaviour follows known rates, and prints
what the reports found next to the simulated truth, with the addresses of the HTML reports.

Modules: :mod:`~demo.world` (shoppers and truth), :mod:`~demo.shop`
(experiment definitions), :mod:`~demo.server` (the server process),
:mod:`~demo.driver` (traffic through the API), :mod:`~demo.reports`
and :mod:`~demo.summary` (truth vs findings), :mod:`~demo.run`.
"""

from demo.run import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]
