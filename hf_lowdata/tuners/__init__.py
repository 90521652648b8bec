"""hf_lowdata's PEFT tuners, one package per method, each registered with PEFT on import."""
