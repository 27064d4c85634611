from django.contrib import admin
from django.urls import path

admin.site.site_header = "medexpo"
admin.site.site_title = "medexpo"
admin.site.index_title = "Exposed medical systems"

urlpatterns = [
    path("admin/", admin.site.urls),
]
