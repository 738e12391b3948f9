; The edge-agent installer for Windows, built with makensis by packaging/windows/build.sh.
; It installs agent.exe under Program Files, writes %ProgramData%\edge-agent\agent.toml (from
; /CONFIG=<file>, or from /BASEURL= /CLIENTID= /CLIENTSECRET= /AGENTID= [/RELEASESURL=]
; [/TRUSTEDKEY=]; an existing one is kept), limits that directory to SYSTEM and administrators,
; and registers and starts the service (agent service install, agent service start).
; Silent: edge-agent-<V>-setup.exe /S /CONFIG=C:\path\agent.toml
;
; Defines from the command line: VERSION, AGENT_EXE, OUTFILE, ROOT (the repository).

; A 64-bit installer for a 64-bit agent (native registry view and Program Files).
Target amd64-unicode
!include "FileFunc.nsh"
!include "LogicLib.nsh"

Name "edge-agent ${VERSION}"
OutFile "${OUTFILE}"
InstallDir "$PROGRAMFILES64\edge-agent"
RequestExecutionLevel admin
SetCompressor /SOLID lzma
ShowInstDetails show
ShowUninstDetails show

Page directory
Page instfiles
UninstPage uninstConfirm
UninstPage instfiles

Var Config
Var Params

Function .onInit
  SetShellVarContext all
FunctionEnd

; Writes one `key = "value"` line when the option /<NAME>= was given.
!macro ConfigLine handle option key
  ${GetOptions} $Params "${option}" $0
  ${IfNot} ${Errors}
    FileWrite ${handle} '${key} = "$0"$\r$\n'
  ${EndIf}
!macroend

Function WriteConfig
  StrCpy $Config "$APPDATA\edge-agent\agent.toml"
  CreateDirectory "$APPDATA\edge-agent"
  ; Only SYSTEM and administrators: the file holds the agent's secret.
  nsExec::ExecToLog 'icacls "$APPDATA\edge-agent" /inheritance:r /grant:r *S-1-5-18:(OI)(CI)F *S-1-5-32-544:(OI)(CI)F'
  Pop $0
  ${GetParameters} $Params
  ClearErrors
  ${GetOptions} $Params "/CONFIG=" $0
  ${IfNot} ${Errors}
    CopyFiles /SILENT "$0" "$Config"
    Return
  ${EndIf}
  IfFileExists "$Config" 0 +3
    DetailPrint "keeping the existing configuration $Config"
    Return
  ClearErrors
  ${GetOptions} $Params "/BASEURL=" $0
  ${If} ${Errors}
    CopyFiles /SILENT "$INSTDIR\agent.toml.example" "$Config"
    DetailPrint "no /CONFIG= or /BASEURL= given: edit $Config, then run: agent service start"
    Return
  ${EndIf}
  FileOpen $1 "$Config" w
  FileWrite $1 "# Written by the edge-agent installer.$\r$\n"
  ClearErrors
  !insertmacro ConfigLine $1 "/BASEURL=" base_url
  ClearErrors
  !insertmacro ConfigLine $1 "/CLIENTID=" client_id
  ClearErrors
  !insertmacro ConfigLine $1 "/CLIENTSECRET=" client_secret
  ClearErrors
  !insertmacro ConfigLine $1 "/AGENTID=" agent_id
  ClearErrors
  !insertmacro ConfigLine $1 "/RELEASESURL=" releases_url
  ClearErrors
  ${GetOptions} $Params "/TRUSTEDKEY=" $0
  ${IfNot} ${Errors}
    FileWrite $1 'trusted_keys = ["$0"]$\r$\n'
  ${EndIf}
  FileClose $1
FunctionEnd

Section "edge-agent"
  SetOutPath "$INSTDIR"
  ; Installing over an installed agent: stop its service first (a running .exe cannot be
  ; replaced); `service install` below then updates it.
  IfFileExists "$INSTDIR\agent.exe" 0 +3
    nsExec::ExecToLog '"$INSTDIR\agent.exe" service stop'
    Pop $0
  File "/oname=agent.exe" "${AGENT_EXE}"
  File "/oname=agent.toml.example" "${ROOT}\packaging\windows\agent.toml.example"
  File "/oname=README.md" "${ROOT}\README.md"
  File "/oname=LICENSE.txt" "${ROOT}\LICENSE"
  WriteUninstaller "$INSTDIR\uninstall.exe"
  Call WriteConfig
  nsExec::ExecToLog '"$INSTDIR\agent.exe" service install --config "$Config"'
  Pop $0
  ${If} $0 != 0
    DetailPrint "the service was not installed (exit code $0): fix $Config, then run agent service install"
    SetErrorLevel 2
    Return
  ${EndIf}
  nsExec::ExecToLog '"$INSTDIR\agent.exe" service start --config "$Config"'
  Pop $0
  ${If} $0 != 0
    DetailPrint "the service did not start (exit code $0): see the log in the state directory"
    SetErrorLevel 3
  ${EndIf}
  WriteRegStr HKLM "Software\Microsoft\Windows\CurrentVersion\Uninstall\edge-agent" "DisplayName" "edge-agent"
  WriteRegStr HKLM "Software\Microsoft\Windows\CurrentVersion\Uninstall\edge-agent" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "Software\Microsoft\Windows\CurrentVersion\Uninstall\edge-agent" "UninstallString" '"$INSTDIR\uninstall.exe"'
SectionEnd

Section "Uninstall"
  SetShellVarContext all
  nsExec::ExecToLog '"$INSTDIR\agent.exe" service uninstall'
  Pop $0
  Delete "$INSTDIR\agent.exe"
  Delete "$INSTDIR\.agent.exe.old-*"
  Delete "$INSTDIR\.edge-agent-download-*"
  Delete "$INSTDIR\agent.toml.example"
  Delete "$INSTDIR\README.md"
  Delete "$INSTDIR\LICENSE.txt"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  DeleteRegKey HKLM "Software\Microsoft\Windows\CurrentVersion\Uninstall\edge-agent"
  ; The configuration and the state in %ProgramData%\edge-agent stay.
SectionEnd
