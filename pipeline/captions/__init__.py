"""Caption files and text: readers of the caption layouts and split lists, the tokenizer, the
demo data generator. Used by every stage; imports only the ground modules."""
