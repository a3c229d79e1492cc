"""What people read: numbers and tables for the terminal, progress lines, plots."""
