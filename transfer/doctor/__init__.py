"""The data doctor: duplicates, leakage, label errors and outliers.

`transfer.doctor.inspect.inspect_data` (`transfer.inspect_data`, `transfer
doctor`) embeds every image of a folder once with a pretrained backbone
(`embeddings`, cached on disk by file content), then finds exact and
near-duplicates and leakage between splits (`duplicates`), likely label
errors, outliers and class imbalance (`label_issues`, with cleanlab),
writes a report, a CSV of issues and a TensorBoard projector (`outputs`,
`report_page`) and, on request, a split without leakage (`fix_split`).
"""
