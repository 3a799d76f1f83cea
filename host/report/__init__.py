"""edgekit report: result files -> variant x target tables (terminal, Markdown, CSV) and PNG plots."""
from .load import LoadedResult, find_result_files, load_results
from .table import COLUMNS, Row, build_rows
from .writers import write_csv, write_markdown

__all__ = ["COLUMNS", "LoadedResult", "Row", "build_rows", "find_result_files", "load_results", "write_csv", "write_markdown"]
