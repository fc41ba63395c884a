"""Figures 2, 3, the reduced-data curve and Table 1 from our runs and/or the paper's Caffe logs.

  python tools/plot_results.py --runs runs/ --out report/
  python tools/plot_results.py --caffe-logs paper_logs/ --out report/

--runs: folders holding run directories (each with log.jsonl, named by its cell: half0A, transfer0A0B_1_3, …).
--caffe-logs: a folder of the paper's net folders (half0A/, …) holding Caffe logs, plain or .gz.
Writes figure2/figure3/reduced .png + .pdf, figure2.csv, figure3.csv, reduced.csv, table1.csv and results.md;
the paper's numbers (shipped in repro/resources/paper_results.csv) are drawn and tabulated beside ours.
"""
import argparse
from collections import Counter

from repro import resources
from repro.caffelog import read_caffe_logs
from repro.cli import tool_main
from repro.study.figures import write_report
from repro.study.results import read_runs, scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=[], metavar="DIR", help="folders of our run directories")
    p.add_argument("--caffe-logs", nargs="+", default=[], metavar="DIR", help="folders of Caffe log folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-paper", action="store_true", help="do not draw the paper's numbers beside ours")
    a = p.parse_args(argv)
    if not a.runs and not a.caffe_logs:
        p.error("give --runs and/or --caffe-logs")
    curves = read_runs(a.runs) if a.runs else []
    for d in a.caffe_logs:
        curves += read_caffe_logs(d)
    net_scores = scores(curves)
    repeated = sorted(n for n, c in Counter(n for n, _ in net_scores).items() if c > 1)
    if repeated:
        print(f"note: {len(repeated)} nets appear more than once and count once each: {repeated[:8]}")
    written = write_report(net_scores, a.out, paper=None if a.no_paper else resources.paper_scores())
    print(f"{len(net_scores)} nets -> {len(written)} files in {a.out}")


if __name__ == "__main__":
    tool_main("plot_results", main)
