"""tasks/metadata/extractors"""
