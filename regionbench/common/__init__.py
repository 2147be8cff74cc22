"""Small mechanisms every stage shares, each written once.

cache       the one key rule, atomic writes and checksums of every on-disk cache
choices     components by short name, with the "did you mean ...?" error
console     stdout for progress and results, stderr for warnings and errors
names       the names of everything regionbench logs to MLflow
packing     documents into fixed-length token windows
torchtools  module modes kept, seeded per-parameter draws, learning-rate schedules
"""
