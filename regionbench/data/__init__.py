"""Data (`data=`): text per language by source name, the same shape from every source.

sources     texts by source (sandbox, local, hub corpora) and the run's language policy
local       local folders of .txt / .jsonl / .parquet files
hub         hub corpora streamed through `datasets`
languages   the paper's language codes and their FLORES names
"""
