"""`glactl compare`: train several architectures on one budget, measure them side by side, report."""
