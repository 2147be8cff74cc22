"""Models: loading by name (`model=`), and what regionbench finds inside any architecture.

loading    sandbox names, Hugging Face ids and local folders, all through `from_pretrained`
scope      the parameters that are scored and selected (`importance.scope`)
residual   the matrices that read and write the residual stream, and on which axis
memory     the device memory a job will need, estimated from the config before loading
"""
