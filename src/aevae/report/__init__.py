"""The comparison report: figures, tables and the Jinja2 templates of reports/index.html."""
