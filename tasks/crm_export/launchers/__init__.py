"""tasks/crm_export/launchers"""
