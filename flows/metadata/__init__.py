"""flows/metadata"""
