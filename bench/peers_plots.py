"""The plots of L{bench.peers}: matplotlib PNGs under docs/img/."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

if TYPE_CHECKING:
    from bench.peers import Peer, Run, Serving, Stampedes, Waiters

COLORS = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]


def color(peers: list[Peer], peer: Peer) -> tuple[float, float, float]:
    found: tuple[float, float, float] = COLORS[peers.index(peer) % len(COLORS)]
    return found


def latencies(runs: list[Run]) -> list[float]:
    """Every answered latency of the runs, pooled."""
    return sorted(shot.answered for run in runs for shot in run.shots if shot.status == 200)


def ecdf(axes: Axes, values: list[float], **style: object) -> None:
    if values:
        fractions = [(i + 1) / len(values) for i in range(len(values))]
        axes.step(values, fractions, where="post", **style)  # type: ignore[arg-type]


def logarithmic(axes: Axes) -> None:
    """A logarithmic x axis labelled in plain numbers (0.01, 0.1, 1)."""
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def stampede_origin(path: Path, peers: list[Peer], stampedes: Stampedes) -> None:
    cases = list(stampedes)
    figure, axes = plt.subplots(figsize=(10, 4.8), layout="constrained")
    width = 0.8 / len(peers)
    for index, peer in enumerate(peers):
        heights = [
            statistics.median(run.origin_requests for run in stampedes[case][peer.key])
            for case in cases
        ]
        positions = [case + (index - (len(peers) - 1) / 2) * width for case in range(len(cases))]
        bars = axes.bar(positions, heights, width, label=peer.name, color=color(peers, peer))
        axes.bar_label(bars, [f"{h:g}" for h in heights], fontsize=7, padding=1)
    axes.set_yscale("log")
    axes.set_ylim(0.5, None)
    axes.axhline(1, color="grey", linewidth=0.8, linestyle=":")
    labels = [f"{kind} key\n{clients} clients" for clients, kind in cases]
    axes.set_xticks(range(len(cases)), labels)
    axes.set_ylabel("origin requests per stampede (median)")
    axes.set_title("Stampede: origin requests (the physical limit is 1)")
    axes.legend(fontsize=8, ncols=2)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def stampede_latency(path: Path, peers: list[Peer], stampedes: Stampedes) -> None:
    clients = sorted({c for c, _ in stampedes})
    kinds = ["absent", "stale"]
    figure, grid = plt.subplots(
        len(kinds), len(clients), figsize=(5 * len(clients), 7), squeeze=False, layout="constrained"
    )
    for row, kind in enumerate(kinds):
        for column, count in enumerate(clients):
            axes = grid[row][column]
            for peer in peers:
                runs = stampedes.get((count, kind), {}).get(peer.key, [])
                ecdf(axes, latencies(runs), label=peer.name, color=color(peers, peer))
            if kind == "stale":
                logarithmic(axes)
            axes.set_title(f"{kind} key, {count} clients", fontsize=10)
            axes.set_xlabel("client latency, s" + (" (log)" if kind == "stale" else ""))
            axes.set_ylabel("fraction of clients answered")
            axes.grid(True, which="both", alpha=0.3)
    grid[0][0].legend(fontsize=7)
    figure.suptitle("Stampede: distribution of client latency (origin takes 1 s)")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def serving_stale(path: Path, peers: list[Peer], serving: Serving) -> None:
    figure, grid = plt.subplots(
        1, 2, figsize=(11, 4.8), sharex=True, sharey=True, squeeze=False, layout="constrained"
    )
    panels = [(0, "on a plain hit"), (1, "during a 2 s refresh")]
    for index, title in panels:
        axes = grid[0][index]
        for peer in peers:
            runs = [pair[index] for pair in serving[peer.key]]
            ecdf(axes, latencies(runs), label=peer.name, color=color(peers, peer))
        logarithmic(axes)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("request latency, s (log)")
        axes.grid(True, which="both", alpha=0.3)
    grid[0][0].set_ylabel("fraction of requests answered")
    grid[0][1].legend(fontsize=8)
    figure.suptitle("Serving stale: the same waves of requests on a plain hit and during a refresh")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def waiters_plot(path: Path, peers: list[Peer], waiters: Waiters) -> None:
    figure, axes = plt.subplots(figsize=(9, 4.8), layout="constrained")
    for peer in peers:
        ecdf(axes, latencies(waiters[peer.key]), label=peer.name, color=color(peers, peer))
    axes.axvline(1.1, color="grey", linewidth=0.8, linestyle=":", label="origin + 100 ms")
    axes.set_xlabel("waiter latency, s")
    axes.set_ylabel("fraction of waiters answered")
    axes.set_title("200 waiters on an absent key (origin takes 1 s)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_all(
    directory: Path,
    peers: list[Peer],
    stampedes: Stampedes,
    serving: Serving,
    waiters: Waiters,
) -> None:
    stampede_origin(directory / "peers-stampede-origin.png", peers, stampedes)
    stampede_latency(directory / "peers-stampede-latency.png", peers, stampedes)
    serving_stale(directory / "peers-serving-stale.png", peers, serving)
    waiters_plot(directory / "peers-waiters.png", peers, waiters)
