"""Horizontal bar charts as plain SVG (no plotting library needed on a fresh machine).

bars(title, unit, rows, path): rows are (label, median, low, high); low/high draw a
whisker (min-max of the runs), None for none.
"""
from html import escape


def bars(title, unit, rows, path, note=""):
    w, left, right, bar_h, gap, top = 760, 190, 90, 22, 10, 48
    h = top + len(rows) * (bar_h + gap) + 40
    peak = max([max(r[1], r[3] or 0) for r in rows] + [1e-9])
    scale = (w - left - right) / peak
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="13">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="24" font-size="15" font-weight="bold">{escape(title)}</text>']
    for i, (label, med, lo, hi) in enumerate(rows):
        y = top + i * (bar_h + gap)
        out.append(f'<text x="{left - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">{escape(label)}</text>')
        colour = "#2f6db5" if label.startswith("podpath") else "#9aa5b1"
        out.append(f'<rect x="{left}" y="{y}" width="{med * scale:.1f}" height="{bar_h}" fill="{colour}"/>')
        if lo is not None and hi is not None:
            yc = y + bar_h / 2
            out.append(f'<line x1="{left + lo * scale:.1f}" y1="{yc}" x2="{left + hi * scale:.1f}" '
                       f'y2="{yc}" stroke="black"/>')
            for x in (lo, hi):
                out.append(f'<line x1="{left + x * scale:.1f}" y1="{yc - 5}" x2="{left + x * scale:.1f}" '
                           f'y2="{yc + 5}" stroke="black"/>')
        end = max(med, hi or 0) * scale
        out.append(f'<text x="{left + end + 6:.1f}" y="{y + bar_h * 0.7:.1f}">{med:.{2 if med < 10 else 0}f}</text>')
    y = h - 14
    out.append(f'<text x="{left}" y="{y}" fill="#555">{escape(unit)}{escape(note)}</text>')
    out.append('</svg>')
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
