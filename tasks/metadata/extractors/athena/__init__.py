"""tasks/metadata/extractors/athena"""
