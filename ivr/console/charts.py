"""The dashboard's charts: SVG drawn on the server by pygal (no script, nothing fetched from outside),
shown as images with a text alternative; the numbers are also in tables under each chart."""
from __future__ import annotations

import base64

import pygal
from pygal.style import Style

STYLE = Style(background="white", plot_background="white", foreground="#1b1b1b", foreground_strong="#1b1b1b",
              foreground_subtle="#555", colors=("#000091", "#c9191e", "#18753c", "#b34000", "#6a6af4"),
              font_family="sans-serif", label_font_size=13, major_label_font_size=13, legend_font_size=13,
              title_font_size=16, value_font_size=12)


def _svg(chart) -> str:
    # js=[]: pygal would otherwise reference its tooltip script on a public site
    data = chart.render()
    return "data:image/svg+xml;base64," + base64.b64encode(data).decode()


def _cfg(**kw):
    base = dict(style=STYLE, js=[], width=760, height=320, show_legend=False, print_values=False,
                no_data_text="Aucune donnée", min_scale=1, max_scale=10)
    return {**base, **kw}


def _int_axis(top: int) -> list[int]:
    """Counts are whole numbers: no 0.1 steps on a day with one call."""
    step = max(1, -(-top // 8))
    return list(range(0, max(top, 1) + step, step))


def charts(fig: dict, themes: dict) -> list[dict]:
    out = []
    days = list(fig["per_day"])
    c = pygal.Bar(**_cfg(title="Appels par jour", x_label_rotation=45, show_minor_x_labels=False))
    c.x_labels = [d[8:10] + "/" + d[5:7] for d in days]
    c.x_labels_major = c.x_labels[:: max(1, len(days) // 10)]
    c.add("Appels", list(fig["per_day"].values()))
    c.y_labels = _int_axis(max(fig["per_day"].values(), default=0))
    out.append({"id": "appels-par-jour", "title": "Appels par jour", "src": _svg(c),
                "alt": f"Histogramme : {fig['calls']} appels du {fig['since']} au {fig['until']}.",
                "rows": [(d, n) for d, n in fig["per_day"].items() if n]})

    share = fig["answered_share"]
    c = pygal.Pie(**_cfg(title="Appels traités sans agent", inner_radius=0.55, show_legend=True,
                         legend_at_bottom=True))
    if fig["handled"]:
        c.add("Répondu par l'assistant", fig["answered"])
        c.add("Agent, message ou abandon", fig["handled"] - fig["answered"])
    out.append({"id": "sans-agent", "title": "Appels traités sans agent", "src": _svg(c),
                "alt": ("Part des appels traités sans agent : "
                        + (f"{share * 100:.0f} %" if share is not None else "aucun appel") + "."),
                "rows": [("Répondu par l'assistant", fig["answered"]),
                         ("Agent, message ou abandon", fig["handled"] - fig["answered"])]})

    for key, title, names in (("reasons", "Raisons des transferts", {}), ("themes", "Thèmes les plus demandés", themes)):
        items = list(fig[key].items())[:8]
        top = max((v for _, v in items), default=1)
        c = pygal.HorizontalBar(**_cfg(title=title, show_legend=True, legend_at_bottom=True, range=(0, top),
                                       max_scale=min(10, max(2, top)), min_scale=min(10, max(2, top)),
                                       legend_at_bottom_columns=2, truncate_legend=40))
        for k, v in items:
            c.add(names.get(k, k), v)
        out.append({"id": key, "title": title, "src": _svg(c),
                    "alt": f"{title} : " + (", ".join(f"{names.get(k, k)} {v}" for k, v in items) or "aucun") + ".",
                    "rows": [(names.get(k, k), v) for k, v in items]})

    sat = fig["satisfaction"]
    c = pygal.Pie(**_cfg(title="Satisfaction déclarée", show_legend=True, legend_at_bottom=True))
    if sat["oui"] + sat["non"]:
        c.add("Satisfait", sat["oui"])
        c.add("Pas satisfait", sat["non"])
    out.append({"id": "satisfaction", "title": "Satisfaction déclarée", "src": _svg(c),
                "alt": f"Satisfaction : {sat['oui']} oui, {sat['non']} non.",
                "rows": [("Satisfait", sat["oui"]), ("Pas satisfait", sat["non"])]})

    c = pygal.Bar(**_cfg(title="Délai de réponse (ms)", show_legend=True, legend_at_bottom=True))
    c.x_labels = ["médiane (p50)", "p95"]
    if fig["latency_turns"]:
        c.add("Délai", [fig["latency_p50_ms"], fig["latency_p95_ms"]])
    out.append({"id": "delai", "title": "Délai de réponse", "src": _svg(c),
                "alt": (f"Délai de réponse : médiane {fig['latency_p50_ms']} ms, p95 {fig['latency_p95_ms']} ms."
                        if fig["latency_turns"] else "Délai de réponse : aucune réponse mesurée."),
                "rows": [("médiane (p50), ms", fig["latency_p50_ms"] or "—"), ("p95, ms", fig["latency_p95_ms"] or "—"),
                         ("réponses mesurées", fig["latency_turns"])]})
    return out
