"""tasks/metadata"""
