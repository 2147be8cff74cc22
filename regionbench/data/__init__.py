"""Text mechanisms every source shares: packing documents into token windows (`packing`), local
folders (`local`), streamed hub corpora (`hub`) and the paper's language codes (`languages`).
Texts by source name, the sandbox included, are `regionbench.texts`."""
