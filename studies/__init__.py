"""The studies made with the plugin, one package each (studies/README.md); common.py is what they share."""
